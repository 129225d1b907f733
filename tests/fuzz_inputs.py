#!/usr/bin/env python3
"""llm-runner on mutated inputs: every run must end in output or a clean error, never a crash.

Mutates the inputs a user hands llm-runner (the fp32 and Q8_0 checkpoints, both tokenizer formats, the
YAML config, a prompts file): truncations, random bytes, header fields set to 0, -1, INT_MAX and other
extremes, stray YAML keys and values. A run fails the test when the process dies of a signal, a sanitizer
reports (run it against the asan-ubsan build for that), or it hangs. A failing input is kept in the work
directory, named after its run. Deterministic for a seed.

Usage: fuzz_inputs.py RUNNER SOURCE_DIR [--runs N] [--seed S] [--work DIR]
Exits 77 (CTest: skipped) when the models are absent (LLM_MODELS_DIR, default SOURCE_DIR/../shared/models).
"""
import argparse
import os
import random
import shutil
import subprocess
import sys

YAML_LINES = ['  max_tokens: -5', '  threads: 99999999999', 'model: [1,2', '  temperature: nan', '  top_p: 2',
              '  bogus: 1', 'x: {a: b', '\t', '  device: gpu', '  prompt: 7', '---', '  order: 5', '  max_tokens: 1e30',
              '  seed: -1', '  path: /dev/zero', '  tokenizer: /dev/null', 'model: ~', '  order: [mha_cpu, mha_cpu]']
EXTREMES = [0, 1, 0xffffffff, 0x7fffffff, 0x80000000, 0x40000000]


def mutate(data, rng):
    b = bytearray(data)
    k = rng.random()
    if k < 0.3:  # truncated
        return bytes(b[:rng.randrange(len(b))])
    if k < 0.55:  # header bytes
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(min(len(b), 512))] = rng.randrange(256)
        return bytes(b)
    if k < 0.8:  # header fields (32-bit words) at extremes
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(min(len(b), 256) // 4) * 4
            b[i:i + 4] = rng.choice(EXTREMES + [rng.randrange(1 << 32)]).to_bytes(4, 'little')
        return bytes(b)
    for _ in range(rng.randint(1, 50)):  # anywhere
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def mutate_yaml(text, rng):
    lines = text.splitlines()
    k = rng.random()
    if k < 0.3:
        i = rng.randrange(len(lines))
        lines[i] = lines[i][:rng.randrange(len(lines[i]) + 1)]
    elif k < 0.6:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(YAML_LINES))
    else:
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 10)):
            b[rng.randrange(len(b))] = rng.randrange(32, 127)
        return b.decode('latin1')
    return '\n'.join(lines)


def mutate_prompts(rng):
    pieces = ['Once upon a time', '', '\xff\xfe\xc3\x28', 'x' * rng.choice([10, 600, 3000]), '\x00', 'a\r', 'Lily']
    return '\n'.join(rng.choice(pieces) for _ in range(rng.randint(0, 12))).encode('latin1')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('runner')
    ap.add_argument('source_dir')
    ap.add_argument('--runs', type=int, default=40)
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--work', default=None, help='where inputs go (default: a fuzz_inputs folder beside the runner)')
    a = ap.parse_args()
    models = os.environ.get('LLM_MODELS_DIR', os.path.join(a.source_dir, '..', 'shared', 'models'))
    names = ['stories260K.bin', 'stories260K_q80.bin', 'tok512.bin', 'tok512.model']
    if not all(os.path.isfile(os.path.join(models, n)) for n in names):
        print(f'SKIP: {", ".join(names)} not all found in {models} (set LLM_MODELS_DIR)')
        return 77
    originals = {n: open(os.path.join(models, n), 'rb').read() for n in names}
    config = open(os.path.join(a.source_dir, 'configs', 'stories260K.yaml')).read()
    work = a.work or os.path.join(os.path.dirname(os.path.abspath(a.runner)), 'fuzz_inputs')
    os.makedirs(work, exist_ok=True)
    rng = random.Random(a.seed)
    env = dict(os.environ, LLM_MODELS_DIR=models)
    failures = 0
    for run in range(a.runs):
        target = rng.choice(names + ['config', 'prompts'])
        model = rng.choice(['stories260K.bin', 'stories260K_q80.bin'])
        tokenizer = rng.choice(['tok512.bin', 'tok512.model'])
        args = [a.runner, '--device', 'cpu', '--threads', '1', '--max-tokens', '6', '--log-level', 'error']
        if target == 'config':
            path = os.path.join(work, 'config.yaml')
            open(path, 'w', encoding='latin1').write(mutate_yaml(config, rng))
            args += ['--config', path]
        elif target == 'prompts':
            path = os.path.join(work, 'prompts.txt')
            open(path, 'wb').write(mutate_prompts(rng))
            args += ['--model', model, '--tokenizer', tokenizer, '--prompts', path]
        else:
            path = os.path.join(work, target)
            open(path, 'wb').write(mutate(originals[target], rng))
            if target.startswith('stories'):
                model = path
            else:
                tokenizer = path
            args += ['--model', model, '--tokenizer', tokenizer, '--prompt', 'Once upon a time']
        try:
            r = subprocess.run(args, capture_output=True, timeout=120, env=env)
            err = r.stderr.decode('utf-8', 'replace')
            bad = r.returncode < 0 or r.returncode >= 128 or 'Sanitizer' in err or 'runtime error:' in err
            what = f'exit {r.returncode}: ' + ' | '.join(err.strip().splitlines()[-3:])
        except subprocess.TimeoutExpired:
            bad, what = True, 'no answer in 120 s'
        if bad:
            failures += 1
            kept = os.path.join(work, f'failed_{run}_{os.path.basename(path)}')
            shutil.copy(path, kept)
            print(f'FAIL run {run} ({target}): {what}\n  input kept: {kept}\n  command: {" ".join(args)}')
    print(f'{a.runs} runs (seed {a.seed}), {failures} failed')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
