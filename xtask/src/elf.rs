//! Static x86-64 Linux executables from machine code: one read-only,
//! executable segment holding the ELF header, the program headers and the
//! code, and optionally a zeroed, writable segment at [`BSS`] (the guest
//! programs `vmm-exit` and `vmm-vsock` are made this way).

/// Where the file is loaded (the headers and the code share one segment).
pub const BASE: u64 = 0x40_0000;
/// Where the zeroed, writable memory starts, if the program asks for it.
pub const BSS: u64 = 0x60_0000;
const ELF_HEADER: usize = 64;
const PROGRAM_HEADER: usize = 56;

/// The executable whose code `assemble` returns for the entry address it
/// is given, with `bss` zeroed bytes of writable memory at [`BSS`] (none
/// if 0).
pub fn executable(
    assemble: impl FnOnce(u64) -> anyhow::Result<Vec<u8>>,
    bss: u64,
) -> anyhow::Result<Vec<u8>> {
    let segments: u16 = if bss == 0 { 1 } else { 2 };
    let headers = ELF_HEADER + PROGRAM_HEADER * usize::from(segments);
    let entry = BASE + headers as u64;
    let code = assemble(entry)?;
    let size = (headers + code.len()) as u64;
    anyhow::ensure!(BASE + size <= BSS, "the code runs into the BSS");
    let mut elf = Vec::with_capacity(size as usize);
    // ELF header: 64-bit, little endian, version 1, System V ABI.
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    elf.extend_from_slice(&entry.to_le_bytes());
    elf.extend_from_slice(&(ELF_HEADER as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(ELF_HEADER as u16).to_le_bytes());
    elf.extend_from_slice(&(PROGRAM_HEADER as u16).to_le_bytes());
    elf.extend_from_slice(&segments.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // no section headers
    // PT_LOAD, readable and executable, covering the file.
    program_header(&mut elf, 5, 0, BASE, size, size);
    if bss != 0 {
        // PT_LOAD, readable and writable, nothing from the file.
        program_header(&mut elf, 6, 0, BSS, 0, bss);
    }
    elf.extend_from_slice(&code);
    Ok(elf)
}

fn program_header(elf: &mut Vec<u8>, flags: u32, offset: u64, at: u64, file: u64, mem: u64) {
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&flags.to_le_bytes());
    elf.extend_from_slice(&offset.to_le_bytes());
    elf.extend_from_slice(&at.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&at.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&file.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&mem.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
}

/// The machine code of an executable [`executable`] made (what follows
/// its program headers).
#[cfg(test)]
pub fn code(elf: &[u8]) -> &[u8] {
    let segments = usize::from(u16::from_le_bytes([elf[56], elf[57]]));
    &elf[ELF_HEADER + PROGRAM_HEADER * segments..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(elf: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(elf[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn the_headers_describe_the_code_and_the_bss() {
        let elf = executable(|entry| Ok(entry.to_le_bytes().to_vec()), 0x1_0000).unwrap();
        let entry = field(&elf, 24);
        assert_eq!(entry, BASE + 64 + 2 * 56);
        assert_eq!(code(&elf), entry.to_le_bytes());
        let (text, bss) = (&elf[64..120], &elf[120..176]);
        assert_eq!(&text[..8], [1, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(field(text, 16), BASE);
        assert_eq!(field(text, 32), elf.len() as u64);
        assert_eq!(&bss[..8], [1, 0, 0, 0, 6, 0, 0, 0]);
        assert_eq!((field(bss, 16), field(bss, 32)), (BSS, 0));
        assert_eq!(field(bss, 40), 0x1_0000);
    }

    #[test]
    fn without_bss_there_is_one_segment() {
        let elf = executable(|_| Ok(vec![0xc3]), 0).unwrap();
        assert_eq!(elf[56], 1);
        assert_eq!(field(&elf, 24), BASE + 64 + 56);
        assert_eq!(code(&elf), [0xc3]);
        assert!(executable(|_| Ok(vec![0x90; 0x20_0000]), 0).is_err());
    }
}
