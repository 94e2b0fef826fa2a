//! CPUID (book chapter 1.3.2, "special instructions"): the table KVM answers
//! the guest's CPUID instruction from. rvmm starts from what KVM supports and
//! fills in what only the VMM knows: each vCPU's APIC ID and the topology.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_PARAMS: u32 = 4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// Topology level types in leaf 0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` things (ceil(log2(n))).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Patches `cpuid` for vCPU `apic_id` of `num_cpus`: one socket, one thread per core.
pub fn patch_cpuid(cpuid: &mut CpuId, apic_id: u8, num_cpus: u8) {
    let n = u32::from(num_cpus.max(1));
    let id = u32::from(apic_id);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, EBX[23:16] addressable logical processors.
                entry.ebx = (entry.ebx & 0x0000_ffff) | (id << 24) | ((1 << id_bits(n)).max(1) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if n > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1.
                entry.eax = (entry.eax & 0x03ff_ffff) | ((n - 1) << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                entry.edx = id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = (LEVEL_SMT << 8) | entry.index;
                    }
                    1 => {
                        entry.eax = id_bits(n);
                        entry.ebx = n;
                        entry.ecx = (LEVEL_CORE << 8) | entry.index;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            LEAF_AMD_SIZE => {
                // ECX[7:0]: threads in the package - 1; ECX[15:12]: APIC ID bits.
                entry.ecx = (entry.ecx & !0xf0ff) | (n - 1) | (id_bits(n) << 12);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_id_and_topology() {
        let entries = [
            kvm_cpuid_entry2 { function: 1, ebx: 0xffff_0800, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xb, index: 0, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xb, index: 1, ..Default::default() },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        patch_cpuid(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800);
        assert!(e[0].ecx & ECX_HYPERVISOR != 0 && e[0].edx & EDX_HTT != 0);
        assert_eq!((e[1].edx, e[1].ebx, e[1].ecx >> 8), (3, 1, LEVEL_SMT));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx >> 8), (2, 4, LEVEL_CORE));
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([id_bits(1), id_bits(2), id_bits(3), id_bits(4), id_bits(5)], [0, 1, 2, 2, 3]);
    }
}
