//! Where the shards' executors run: `corestate.first_core`, `pin_cores`.

use super::*;

#[test]
fn core_placement_from_file_and_env() {
    let default = load_with(&[], &[]).unwrap();
    assert_eq!(default.cores, CorePlacement::default());
    assert_eq!(default.cores.cpu_of(0, 4), Some(0));
    assert_eq!(default.cores.cpu_of(5, 4), Some(1));

    let c = load_yaml("corestate:\n  first_core: 3\n").unwrap();
    assert_eq!(c.cores.first_core, 3);
    assert_eq!(c.cores.cpu_of(0, 2), Some(1), "wraps around the CPUs");
    assert_eq!(c.cores.cpu_of(1, 2), Some(0));
    assert_eq!(c.cores.to_string(), "pinned from CPU 3");

    let c = load_yaml_env(
        "corestate:\n  first_core: 3\n  pin_cores: true\n",
        &[
            ("CORESTATE_FIRST_CORE", "1"),
            ("CORESTATE_PIN_CORES", "false"),
        ],
    )
    .unwrap();
    assert_eq!(c.cores.first_core, 1);
    assert!(!c.cores.pin);
    assert_eq!(c.cores.cpu_of(0, 2), None);
    assert_eq!(c.cores.to_string(), "unpinned");

    let refused = [
        (
            load_yaml("corestate:\n  first_core: 5000\n"),
            "corestate.first_core",
        ),
        (
            load_yaml("corestate:\n  pin_cores: sometimes\n"),
            "corestate.pin_cores",
        ),
        (
            load_with(&[], &[("CORESTATE_FIRST_CORE", "-1")]),
            "CORESTATE_FIRST_CORE",
        ),
    ];
    for (loaded, key) in refused {
        assert_eq!(err_key(loaded), key);
    }
}
