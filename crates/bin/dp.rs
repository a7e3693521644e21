//! dp: the one-line deploy; see `dp --help`.

fn main() {
    dp_cli::main_with("dp", dp_cli::dp::run)
}
