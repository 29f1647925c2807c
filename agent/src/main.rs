fn main() {
    let mut ebpf = aya::Ebpf::load(tierguard::datapath::EBPF_OBJECT).expect("load");
    let p: &mut aya::programs::Xdp = ebpf.program_mut("tierguard_ingress").unwrap().try_into().unwrap();
    p.load().expect("verifier");
    println!("loaded ok");
}
