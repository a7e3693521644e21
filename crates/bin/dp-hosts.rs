//! dp-hosts: host records from deploy.toml or stdin; see `dp-hosts --help`.

fn main() {
    dp_cli::main_with("dp-hosts", dp_cli::hosts::run)
}
