//! Log set-up shared by `spindle` and `spindle-convert`: human-readable
//! lines on stderr by default, JSON lines for a log collector when
//! `SPINDLE_LOG_FORMAT=json`. `SPINDLE_LOG` is the filter (default `info`).

/// Installs the global subscriber; call once at start-up.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPINDLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("SPINDLE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
