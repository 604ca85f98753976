//! The `corestate` binary: read the configuration and the TLS files, set up
//! logging, run until SIGTERM/SIGINT.
//!
//! Exit status: 0 after a graceful shutdown; 2 for an unusable
//! configuration or TLS file (the message names the key or the file); 1
//! for any other failure (start-up, or a shutdown that could not confirm
//! every WAL sync).

use corestate::config::LogFormat;

/// mimalloc: per-thread free lists suit one thread per core, and the
/// request path allocates and frees small buffers on every request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Return the pages mimalloc holds free to the system now, instead of
/// after its purge delay and the thread's next allocation
/// (`shards::env::memory`).
fn release_freed_memory() {
    // SAFETY: mi_collect only walks the allocator's own structures; any
    // thread may call it at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Exit status for a configuration the server cannot start with.
const EXIT_CONFIG_ERROR: i32 = 2;
/// Exit status for every other failure.
const EXIT_FAILURE: i32 = 1;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() {
    let config = match corestate::config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corestate: {e}");
            std::process::exit(EXIT_CONFIG_ERROR);
        }
    };
    init_logging(config.log_format);
    shards::env::memory::set_release_freed_memory(release_freed_memory);
    let tls = match corestate::server::tls::load(&config.tls) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("corestate: {e}");
            std::process::exit(EXIT_CONFIG_ERROR);
        }
    };
    // A cluster's peer links' TLS files, read once, like the client port's.
    let peer_tls = match config.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
        None => None,
        Some(files) => match corestate_raft::net::PeerTls::load(files) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("corestate: corestate.cluster.tls: {e}");
                std::process::exit(EXIT_CONFIG_ERROR);
            }
        },
    };
    if let Err(e) = corestate::runtime::run(config, tls, peer_tls) {
        eprintln!("corestate: {e}");
        std::process::exit(EXIT_FAILURE);
    }
}
