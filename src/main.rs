//! The `pilot-bridge` binary: everything lives in the library; this only hands over the CLI.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    pilot_bridge::cli::main()
}
