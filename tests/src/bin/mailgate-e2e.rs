//! The `mailgate` program under the name end-to-end tests start it by.

fn main() -> std::process::ExitCode {
    mailgate::main_entry()
}
