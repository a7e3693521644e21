//! dp-deps: make release dependencies ready on the hosts read from stdin; see `dp-deps --help`.

fn main() {
    dp_cli::main_with("dp-deps", dp_cli::deps::run)
}
