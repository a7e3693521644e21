//! dp-sync: upload a release to the hosts read from stdin; see `dp-sync --help`.

fn main() {
    dp_cli::main_with("dp-sync", dp_cli::sync::run)
}
