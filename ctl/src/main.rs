//! `successover`: the operator CLI (see `successover_ctl`).

fn main() -> std::process::ExitCode {
    successover_ctl::main()
}
