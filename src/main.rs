//! The `corestate` binary: read the configuration, set up logging, run.

fn main() {
    let config = match corestate::config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corestate: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = corestate::runtime::run(config) {
        eprintln!("corestate: {e}");
        std::process::exit(1);
    }
}
