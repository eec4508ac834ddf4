//! `successover`: the operator CLI (see `successover_agent::cli`).

fn main() -> std::process::ExitCode {
    successover_agent::cli::main()
}
