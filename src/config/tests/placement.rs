//! Where the shards' executors run: `corestate.first_core`, `pin_cores`;
//! how long they spin before parking: `spin_before_park_us`.

use std::time::Duration;

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

    assert_refused([
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
    ]);
}

#[test]
fn spin_before_park_follows_the_fsync_policy_unless_configured() {
    let micros = |c: &Config| c.cores.spin_before_park(c.fsync);
    let default = load_with(&[], &[]).unwrap();
    assert_eq!(default.cores.spin_before_park_us, None);
    assert_eq!(
        micros(&default),
        Duration::from_micros(SPIN_BEFORE_PARK_US_DURABLE_DEFAULT)
    );
    let relaxed = load_yaml("storage:\n  fsync_policy: never\n").unwrap();
    assert_eq!(
        micros(&relaxed),
        Duration::from_micros(SPIN_BEFORE_PARK_US_RELAXED_DEFAULT)
    );
    let every_n = load_yaml("storage:\n  fsync_policy: every_n:8\n").unwrap();
    assert_eq!(micros(&every_n), micros(&relaxed));

    let set = load_yaml("corestate:\n  spin_before_park_us: 30\n").unwrap();
    assert_eq!(micros(&set), Duration::from_micros(30), "configured wins");
    let zero = load_yaml_env(
        "storage:\n  fsync_policy: never\ncorestate:\n  spin_before_park_us: 30\n",
        &[("CORESTATE_SPIN_BEFORE_PARK_US", "0")],
    )
    .unwrap();
    assert_eq!(
        micros(&zero),
        Duration::ZERO,
        "the environment over the file"
    );

    assert_refused([
        (
            load_yaml("corestate:\n  spin_before_park_us: 10001\n"),
            "corestate.spin_before_park_us",
        ),
        (
            load_yaml("corestate:\n  spin_before_park_us: -1\n"),
            "corestate.spin_before_park_us",
        ),
        (
            load_with(&[], &[("CORESTATE_SPIN_BEFORE_PARK_US", "soon")]),
            "CORESTATE_SPIN_BEFORE_PARK_US",
        ),
    ]);
}
