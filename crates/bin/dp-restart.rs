//! dp-restart: roll the release out behind health checks; see `dp-restart --help`.

fn main() {
    dp_cli::main_with("dp-restart", dp_cli::restart::run)
}
