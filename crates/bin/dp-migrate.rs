//! dp-migrate: apply database migrations once per deploy; see `dp-migrate --help`.

fn main() {
    dp_cli::main_with("dp-migrate", dp_cli::migrate::run)
}
