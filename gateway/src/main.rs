//! The `mailgate` binary.

fn main() -> std::process::ExitCode {
    mailgate::main_entry()
}
