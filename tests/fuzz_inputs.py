#!/usr/bin/env python3
"""llm-runner on mutated inputs: every run must end in output or a clean error, never a crash.

Mutates the inputs a user hands llm-runner (the fp32 and Q8_0 checkpoints, a GGUF file, a Hugging Face
directory's config.json, model.safetensors and tokenizer.json, both llama2.c tokenizer formats, the YAML
config, a prompts file): truncations, random bytes, header fields set to 0, -1, INT_MAX and other extremes,
JSON numbers replaced by extremes and wrong types, stray YAML keys and values. A run fails the test when the process dies of a signal, a sanitizer
reports (run it against the asan-ubsan build for that), or it hangs. A failing input is kept in the work
directory, named after its run. Deterministic for a seed.

Usage: fuzz_inputs.py RUNNER SOURCE_DIR [--runs N] [--seed S] [--work DIR] [--convert CONVERT_TO_GGUF]
Exits 77 (CTest: skipped) when the models are absent (LLM_MODELS_DIR, default SOURCE_DIR/../shared/models).
"""
import argparse
import os
import random
import re
import shutil
import subprocess
import sys

YAML_LINES = ['  max_tokens: -5', '  threads: 99999999999', 'model: [1,2', '  temperature: nan', '  top_p: 2',
              '  bogus: 1', 'x: {a: b', '\t', '  device: gpu', '  prompt: 7', '---', '  order: 5', '  max_tokens: 1e30',
              '  seed: -1', '  path: /dev/zero', '  tokenizer: /dev/null', 'model: ~', '  order: [mha_cpu, mha_cpu]']
EXTREMES = [0, 1, 0xffffffff, 0x7fffffff, 0x80000000, 0x40000000]


JSON_VALUES = ['0', '-1', '1', '3', '4294967296', '1e308', '-1e308', '0.5', '"x"', '""', 'null', '[]', '{}', 'true',
               '65536']


def mutate(data, rng, head=512):
    """Bytes: truncated, `head` bytes of header changed, 32-bit header fields at extremes, or bytes anywhere."""
    b = bytearray(data)
    k = rng.random()
    if k < 0.3:  # truncated
        return bytes(b[:rng.randrange(len(b))])
    if k < 0.55:  # header bytes
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(min(len(b), head))] = rng.randrange(256)
        return bytes(b)
    if k < 0.8:  # header fields (32-bit words) at extremes
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(min(len(b), head) // 4) * 4
            b[i:i + 4] = rng.choice(EXTREMES + [rng.randrange(1 << 32)]).to_bytes(4, 'little')
        return bytes(b)
    for _ in range(rng.randint(1, 50)):  # anywhere
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def mutate_json(data, rng):
    """JSON (or a file that starts with some): values of object members swapped for extremes or wrong types
    (the file stays valid JSON), else byte mutations."""
    text = data.decode('latin1')
    value = r':\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|"[^"\\]{0,60}"|true|false|null)'
    if rng.random() < 0.7:
        for _ in range(rng.randint(1, 3)):
            spots = list(re.finditer(value, text[:50000]))
            if not spots:
                break
            m = rng.choice(spots)
            text = text[:m.start(1)] + rng.choice(JSON_VALUES) + text[m.end(1):]
        return text.encode('latin1')
    return mutate(data, rng, head=4096)


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
    ap.add_argument('--convert', default=None, help='convert_to_gguf, to fuzz a GGUF made from stories260K')
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
    env = dict(os.environ, LLM_MODELS_DIR=models)
    targets = names + ['config', 'prompts']
    hf_source = os.path.join(a.source_dir, 'tests', 'data', 'hf', 'llama3_style')
    hf_files = ['config.json', 'model.safetensors', 'tokenizer.json']
    if all(os.path.isfile(os.path.join(hf_source, n)) for n in hf_files):
        for n in hf_files:
            originals['hf/' + n] = open(os.path.join(hf_source, n), 'rb').read()
        targets += ['hf/' + n for n in hf_files]
    if a.convert:
        gguf = os.path.join(work, 'stories260K.gguf')
        subprocess.run([a.convert, '--model', os.path.join(models, 'stories260K.bin'), '--tokenizer',
                        os.path.join(models, 'tok512.bin'), '--type', 'q8_0', '--out', gguf], check=True,
                       capture_output=True)
        originals['stories260K.gguf'] = open(gguf, 'rb').read()
        targets.append('stories260K.gguf')
    rng = random.Random(a.seed)
    failures = 0
    tally = {}  # target: [runs, clean errors]
    for run in range(a.runs):
        target = rng.choice(targets)
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
        elif target.startswith('hf/'):  # a Hugging Face directory with one file mutated
            hf = os.path.join(work, 'hf')
            os.makedirs(hf, exist_ok=True)
            for n in hf_files:
                open(os.path.join(hf, n), 'wb').write(originals['hf/' + n])
            path = os.path.join(work, target)
            data = originals[target]
            if target.endswith('.safetensors') and rng.random() < 0.7:  # its JSON header
                size = int.from_bytes(data[:8], 'little')
                header = mutate_json(data[8:8 + size], rng)
                data = (len(header) if rng.random() < 0.8 else rng.choice(EXTREMES)).to_bytes(8, 'little') + \
                    header + data[8 + size:]
            elif target.endswith('.json'):
                data = mutate_json(data, rng)
            else:
                data = mutate(data, rng)
            open(path, 'wb').write(data)
            args += ['--model', hf, '--prompt', 'Once upon a time']
        elif target.endswith('.gguf'):
            path = os.path.join(work, 'mutated.gguf')
            open(path, 'wb').write(mutate(originals[target], rng, head=8192))
            args += ['--model', path, '--prompt', 'Once upon a time']
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
        t = tally.setdefault(target, [0, 0])
        t[0] += 1
        t[1] += 0 if bad or r.returncode == 0 else 1
        if bad:
            failures += 1
            kept = os.path.join(work, f'failed_{run}_{os.path.basename(path)}')
            shutil.copy(path, kept)
            print(f'FAIL run {run} ({target}): {what}\n  input kept: {kept}\n  command: {" ".join(args)}')
    for target, (n, errors) in sorted(tally.items()):
        print(f'  {target:22} {n:4} runs, {errors:4} refused with an error, {n - errors:4} generated text or failed')
    print(f'{a.runs} runs (seed {a.seed}), {failures} failed')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
