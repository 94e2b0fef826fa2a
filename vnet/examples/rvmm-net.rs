//! `rvmm net` as a stand-alone program, for trying the subcommands before rvmm wires
//! them: `cargo run -p vnet --example rvmm-net -- apply FILE --node NAME`.

fn main() {
    std::process::exit(vnet::run_cli(std::env::args().skip(1).collect()));
}
