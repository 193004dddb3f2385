//! Disassembly of guest code with `iced-x86` (Intel syntax).

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};

use crate::debugger::CodeBitness;

/// One disassembled instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisasLine {
    /// Address of the instruction.
    pub addr: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Intel-syntax text; `(bad)` for an undecodable byte.
    pub text: String,
}

impl std::fmt::Display for DisasLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}  ", self.addr)?;
        for b in &self.bytes {
            write!(f, "{b:02x}")?;
        }
        let pad = 2 * 10usize.saturating_sub(self.bytes.len());
        write!(f, "{:pad$}  {}", "", self.text)
    }
}

/// Disassembles up to `count` instructions from `code`, which starts at `addr`.
/// Stops early when `code` ends inside an instruction.
///
/// ```
/// use dbgf::debugger::CodeBitness;
/// use dbgf::disas::disassemble;
/// let lines = disassemble(&[0x48, 0x89, 0xd8, 0xc3], 0x1000, CodeBitness::Bits64, 8);
/// assert_eq!(lines.len(), 2);
/// assert_eq!(lines[0].text, "mov rax,rbx");
/// assert_eq!(lines[1].addr, 0x1003);
/// assert_eq!(lines[1].text, "ret");
/// ```
pub fn disassemble(code: &[u8], addr: u64, bitness: CodeBitness, count: usize) -> Vec<DisasLine> {
    let mut decoder = Decoder::with_ip(bitness.bits(), code, addr, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    let mut insn = Instruction::default();
    let mut out = Vec::new();
    while out.len() < count && decoder.can_decode() {
        let pos = decoder.position();
        decoder.decode_out(&mut insn);
        if decoder.last_error() == iced_x86::DecoderError::NoMoreBytes {
            break;
        }
        let len = if insn.is_invalid() { 1 } else { insn.len() };
        let text = if insn.is_invalid() {
            "(bad)".to_string()
        } else {
            let mut s = String::new();
            formatter.format(&insn, &mut s);
            s
        };
        out.push(DisasLine {
            addr: addr.wrapping_add(pos as u64),
            bytes: code[pos..pos + len].to_vec(),
            text,
        });
        if insn.is_invalid() && decoder.set_position(pos + 1).is_err() {
            break;
        }
    }
    out
}

/// Length of the instruction at the start of `code`, `None` if it does not decode.
///
/// ```
/// use dbgf::debugger::CodeBitness;
/// assert_eq!(dbgf::disas::instruction_len(&[0x90], CodeBitness::Bits64), Some(1));
/// assert_eq!(dbgf::disas::instruction_len(&[0x48], CodeBitness::Bits64), None);
/// ```
pub fn instruction_len(code: &[u8], bitness: CodeBitness) -> Option<usize> {
    let mut decoder = Decoder::new(bitness.bits(), code, DecoderOptions::NONE);
    let insn = decoder.decode();
    (!insn.is_invalid()).then(|| insn.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitness_changes_decoding() {
        let code = [0xb8, 0x01, 0x00, 0x00, 0x00];
        let l32 = disassemble(&code, 0, CodeBitness::Bits32, 1);
        assert_eq!(l32[0].text, "mov eax,1");
        let l16 = disassemble(&code, 0, CodeBitness::Bits16, 3);
        assert_eq!(l16[0].text, "mov ax,1");
        assert_eq!(l16[0].bytes.len(), 3);
    }

    #[test]
    fn bad_bytes_and_truncation() {
        // 0x06 (push es) is invalid in 64-bit mode; 0x48 alone is a truncated prefix.
        let lines = disassemble(&[0x06, 0x90, 0x48], 0x10, CodeBitness::Bits64, 10);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text, "(bad)");
        assert_eq!(lines[1].text, "nop");
        assert_eq!(lines[1].addr, 0x11);
        assert!(lines[1].to_string().contains("90"));
        assert!(disassemble(&[], 0, CodeBitness::Bits64, 4).is_empty());
    }
}
