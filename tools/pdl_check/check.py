#!/usr/bin/env python3
"""Checks, in the SASS that ptxas emits, that PDL kernels touch no activation before griddepcontrol.wait.

A kernel launched with launch_pdl (runtime/cuda/pdl.cuh) may start while the kernel before it is still
writing; only loads of weights may come before its wait_for_previous_kernel(). The CUDA source can be in
the right order and the machine code not: ld.global.nc (__ldg) promises data that nobody writes while the
kernel runs, and ptxas did move such a load of x above the wait (gemv_tc_kernel<T, 2, 1, *>). There is no
disassembler on the CPU machines, so this reads the cubin's .text sections itself: calibrate.cu gives the
encodings of the wait, of mma.cuh's load_stream (the one memory access allowed before it) and of global
loads, stores and atomics; every kernel that contains the wait is then scanned up to its first
wait (in code order). Usage: check.py CALIBRATION_CUBIN KERNEL_CUBIN...; exit status 1 on a finding.
"""
import struct
import sys


def text_sections(path):
    d = open(path, 'rb').read()
    shoff = struct.unpack_from('<Q', d, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', d, 0x3A)
    hdrs = [struct.unpack_from('<IIQQQQ', d, shoff + i * shentsize) for i in range(shnum)]
    strtab = hdrs[shstrndx][4]
    out = {}
    for name, _typ, _flags, _addr, off, size in hdrs:
        n = d[strtab + name:d.index(b'\0', strtab + name)].decode()
        if n.startswith('.text.'):
            out[n[len('.text.'):]] = [struct.unpack_from('<QQ', d, off + i) for i in range(0, size - size % 16, 16)]
    return out


def op(ins):
    return ins[0] & 0xfff


def kind(ins):  # opcode and the modifier bits of the second word (size, caching, .nc)
    return (op(ins), ins[1] & 0xffffffff)


def calibrate(path):
    k = text_sections(path)
    find = lambda name: next(v for n, v in k.items() if name in n)
    base, wait = find('k_base'), find('k_wait')
    wait_ops = {op(i) for i in wait} - {op(i) for i in base}
    if len(wait_ops) != 1:
        sys.exit('calibration: cannot tell the wait instruction (%s)' % sorted(wait_ops))
    # global memory opcodes (0x98x and 0x9ax on sm_90): k_base's load and store, k_stream's load, k_atomic's
    # atomic; k_shared's shared-memory accesses (same family) excluded
    family = lambda name: {op(i) for i in find(name) if 0x980 <= op(i) <= 0x9af}
    mem = (family('k_base') | family('k_stream') | family('k_atomic')) - (family('k_shared') - family('k_base'))
    streamed = {kind(i) for i in find('k_stream')} - {kind(i) for i in base}
    streamed = {s for s in streamed if s[0] in mem}
    if len(streamed) != 1 or not mem:
        sys.exit('calibration: cannot tell the memory instructions (%s, %s)' % (sorted(mem), sorted(streamed)))
    return wait_ops.pop(), mem, streamed.pop()


def main():
    wait_op, mem_ops, streamed = calibrate(sys.argv[1])
    findings = checked = 0
    for path in sys.argv[2:]:
        for name, code in text_sections(path).items():
            waits = [i for i, ins in enumerate(code) if op(ins) == wait_op]
            if not waits:
                continue  # not a PDL kernel
            checked += 1
            early = [i for i in range(waits[0]) if op(code[i]) in mem_ops and kind(code[i]) != streamed]
            if early:
                findings += 1
                print('%s: %s: %d memory access(es) other than a streamed weight load before the PDL wait '
                      '(instructions %s; wait at %d)' % (path.split('/')[-1], name, len(early), early, waits[0]))
    print('pdl_check: %d PDL kernel(s) checked, %d with an access before the wait' % (checked, findings))
    return 1 if findings or not checked else 0


if __name__ == '__main__':
    sys.exit(main())
