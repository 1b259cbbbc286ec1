//! The seccomp allow list compiled to classic BPF as a short chain of syscall-number
//! ranges, instead of `seccompiler`'s one comparison block per system call.
//!
//! Why: the kernel prepares a per-filter cache at every `seccomp()` call by running the
//! filter once for every system call number, and JIT-compiles it; `seccompiler`'s 1,514
//! instructions for Docker's ~340 calls made that 0.7–0.9 ms of CPU per container here. The
//! 101 instructions of ranges do the same work in a fraction of it. The tests run this
//! program and `seccompiler`'s through a BPF interpreter for every system call number and
//! the arguments the profile inspects, and require the same verdict.

use std::collections::BTreeMap;

use seccompiler::sock_filter;

/// What the filter does with one system call number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// `clone` without namespace flags (argument 0 masked with this).
    CloneWithout(u32),
    /// `socket` of any family but this one (argument 0).
    SocketNot(u32),
    /// `personality` with one of these values (argument 0).
    Personality(&'static [u32]),
    /// `ioctl` with any request but these (argument 1).
    IoctlNot(&'static [u32]),
    /// Fails with this errno (`clone3` → ENOSYS, so libc falls back to `clone`).
    Errno(u32),
}

const LD_W_ABS: u16 = 0x20;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const JMP_JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;
pub(crate) const RET_ERRNO: u32 = 0x0005_0000;
pub(crate) const RET_KILL_PROCESS: u32 = 0x8000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// x32 system calls have this bit set; none is allowed.
const X32_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// A jump target not yet placed: resolved to an offset once the blocks are laid out.
#[derive(Clone, Copy)]
enum To {
    Next,
    Deny,
    Block(usize),
}

/// The program for `verdicts` (everything not in it fails with EPERM); `None` if a jump
/// would not fit BPF's 8-bit offsets.
pub(crate) fn compile(verdicts: &BTreeMap<u32, Verdict>) -> Option<Vec<sock_filter>> {
    // Runs of consecutive numbers with the same verdict; the checks beyond `Allow` get a
    // block of their own after the chain.
    let mut runs: Vec<(u32, u32, Verdict)> = Vec::new();
    for (&nr, &v) in verdicts {
        match runs.last_mut() {
            Some((_, hi, last)) if *hi + 1 == nr && *last == v && v == Verdict::Allow => *hi = nr,
            _ => runs.push((nr, nr, v)),
        }
    }
    let mut blocks: Vec<Verdict> = vec![Verdict::Allow];
    let mut chain: Vec<(u16, u32, To, To)> = Vec::new();
    for &(lo, hi, v) in &runs {
        let block = match blocks.iter().position(|b| *b == v) {
            Some(i) => i,
            None => {
                blocks.push(v);
                blocks.len() - 1
            }
        };
        // nr > hi: the next run; else nr >= lo: this run's verdict; else a gap.
        chain.push((JMP_JGT_K, hi, To::Next, To::Next));
        chain.push((JMP_JGE_K, lo, To::Block(block), To::Deny));
    }
    if chain.len() > 255 {
        return None;
    }
    let mut prog = vec![
        stmt(LD_W_ABS, ARCH),
        jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR),
        // x32: deny (the chain's last instruction is followed by the deny return).
        jump(JMP_JSET_K, X32_BIT, chain.len() as u8, 0),
    ];
    // Block code, laid out after the chain and the deny return.
    let deny_at = prog.len() + chain.len();
    let mut block_at = Vec::new();
    let mut tail = vec![stmt(RET_K, RET_ERRNO | libc::EPERM as u32)];
    for b in &blocks {
        block_at.push(deny_at + tail.len());
        tail.extend(block_code(*b));
    }
    for (i, (code, k, jt, jf)) in chain.into_iter().enumerate() {
        let at = prog.len();
        let off = |to: To| -> Option<u8> {
            let target = match to {
                To::Next => at + 1 + (i % 2 == 0) as usize,
                To::Deny => deny_at,
                To::Block(b) => block_at[b],
            };
            u8::try_from(target - at - 1).ok()
        };
        // The JGT's true branch skips its JGE; its false branch falls into it.
        let (t, f) = match code {
            JMP_JGT_K => (off(jt)?, 0),
            _ => (off(jt)?, off(jf)?),
        };
        prog.push(jump(code, k, t, f));
    }
    prog.extend(tail);
    Some(prog)
}

/// The code of one verdict (returns only: no jump leaves the block).
fn block_code(v: Verdict) -> Vec<sock_filter> {
    let allow = stmt(RET_K, RET_ALLOW);
    match v {
        Verdict::Allow => vec![allow],
        Verdict::Errno(e) => vec![stmt(RET_K, RET_ERRNO | e)],
        Verdict::CloneWithout(mask) => vec![
            stmt(LD_W_ABS, arg_low(0)),
            jump(JMP_JSET_K, mask, 1, 0),
            allow,
            stmt(RET_K, RET_ERRNO | libc::EPERM as u32),
        ],
        Verdict::SocketNot(family) => vec![
            stmt(LD_W_ABS, arg_low(0)),
            jump(JMP_JEQ_K, family, 1, 0),
            allow,
            stmt(RET_K, RET_ERRNO | libc::EPERM as u32),
        ],
        Verdict::Personality(values) => {
            let n = values.len();
            let mut code = vec![stmt(LD_W_ABS, arg_low(0))];
            for (i, &v) in values.iter().enumerate() {
                // Equal: jump to the allow after the remaining comparisons and the deny.
                code.push(jump(JMP_JEQ_K, v, (n - i) as u8, 0));
            }
            code.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
            code.push(allow);
            code
        }
        Verdict::IoctlNot(requests) => {
            let n = requests.len();
            let mut code = vec![stmt(LD_W_ABS, arg_low(1))];
            for (i, &r) in requests.iter().enumerate() {
                code.push(jump(JMP_JEQ_K, r, (n - i) as u8, 0));
            }
            code.push(allow);
            code.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
            code
        }
    }
}

/// Runs a classic BPF seccomp program on `nr`, `arch` and the low words of `args` (the
/// subset of instructions `seccompiler` and [`compile`] emit).
#[cfg(test)]
pub(crate) fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u32; 16];
    data[0] = nr;
    data[1] = arch;
    for (i, a) in args.iter().enumerate() {
        data[4 + 2 * i] = *a as u32;
        data[5 + 2 * i] = (*a >> 32) as u32;
    }
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let ins = &prog[pc];
        pc += 1;
        let k = ins.k;
        let cond = |c: bool| if c { ins.jt as usize } else { ins.jf as usize };
        match ins.code {
            0x20 => acc = data[(k / 4) as usize],
            0x54 => acc &= k,
            0x05 => pc += k as usize,
            0x15 => pc += cond(acc == k),
            0x25 => pc += cond(acc > k),
            0x35 => pc += cond(acc >= k),
            0x45 => pc += cond(acc & k != 0),
            0x06 => return k,
            other => panic!("instruction {other:#x} not interpreted"),
        }
    }
}
