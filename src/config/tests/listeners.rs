//! The listeners' addresses: the HTTP API's `http_listen` from every layer,
//! `off`, precedence, and bad values naming their key.

use super::*;

#[test]
fn http_listen_from_every_layer_with_off_and_bad_values_naming_their_key() {
    let addr = |text: &str| Some(text.parse::<SocketAddr>().unwrap());
    assert_eq!(
        load_yaml("corestate:\n  http_listen: \"0.0.0.0:8080\"\n")
            .unwrap()
            .http_listen,
        addr("0.0.0.0:8080")
    );
    assert_eq!(
        load_yaml("corestate:\n  http_listen: \"off\"\n")
            .unwrap()
            .http_listen,
        None
    );
    assert_eq!(
        load_with(&[], &[("CORESTATE_HTTP_LISTEN", "OFF")])
            .unwrap()
            .http_listen,
        None
    );
    // Flag beats environment beats file.
    assert_eq!(
        load_yaml_env(
            "corestate:\n  http_listen: \"127.0.0.1:1\"\n",
            &[("CORESTATE_HTTP_LISTEN", "127.0.0.1:2")]
        )
        .unwrap()
        .http_listen,
        addr("127.0.0.1:2")
    );
    assert_eq!(
        load_with(
            &["--http-listen", "127.0.0.1:3"],
            &[("CORESTATE_HTTP_LISTEN", "off")]
        )
        .unwrap()
        .http_listen,
        addr("127.0.0.1:3")
    );
    assert_eq!(
        load_with(&["--http-listen", "off"], &[])
            .unwrap()
            .http_listen,
        None
    );
    assert_eq!(
        err_key(load_with(&["--http-listen", "nowhere"], &[])),
        "--http-listen"
    );
    assert_eq!(
        err_key(load_with(&[], &[("CORESTATE_HTTP_LISTEN", "7402")])),
        "CORESTATE_HTTP_LISTEN"
    );
    assert_eq!(
        err_key(load_yaml("corestate:\n  http_listen: 7402\n")),
        "corestate.http_listen"
    );
    let e = load_with(&["--http-listen", "nowhere"], &[]).unwrap_err();
    assert!(e.message.contains("or `off`"), "{e}");
    assert!(load_with(&[], &[])
        .unwrap()
        .summary()
        .contains("http 127.0.0.1:7402"));
}
