//! The `corestate-bench` command (see the library for everything else).

fn main() -> std::process::ExitCode {
    corestate_bench::main_entry()
}
