//! `spindle`: a WebAssembly function platform that runs `spin.toml`
//! applications under wasmtime.

mod builder;
mod cli;
mod client;
mod up;
mod watch;

use clap::Parser;

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn main() -> std::process::ExitCode {
    spindle_platform::logging::init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Up(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(up::run(args))),
        cli::Command::Build(args) => spindle_platform::manifest::Manifest::load(&args.manifest)
            .map_err(anyhow::Error::from)
            .and_then(|m| builder::build(&m, &args.components)),
        cli::Command::Deploy(args) => {
            client_runtime().and_then(|rt| rt.block_on(client::deploy(args)))
        }
        cli::Command::Rollback(args) => {
            client_runtime().and_then(|rt| rt.block_on(client::rollback(args)))
        }
        cli::Command::Status(args) => {
            client_runtime().and_then(|rt| rt.block_on(client::status(args.admin, args.json)))
        }
        cli::Command::DeadLetters(args) => {
            client_runtime().and_then(|rt| rt.block_on(client::dead_letters(args)))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
