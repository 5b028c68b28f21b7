#!/usr/bin/env python3
"""Runs the `run:` steps of a GitHub Actions workflow locally, as a runner would.

    run_workflow.py WORKFLOW --workdir DIR --set NAME=VALUE ... [--skip STEP_NAME ...]

For every job whose `if:` holds, in file order, each step whose `if:` holds is run with
`bash --noprofile --norc -eo pipefail` in DIR, with the workflow's, the job's and the
step's `env:` (and what earlier steps appended to $GITHUB_ENV) in its environment.
`${{ expr }}` is replaced by the value given with `--set expr=value`; an expression with
no value is an error, so nothing runs half-substituted. `if:` supports `a == 'x'` and
`a != 'x'` joined by `&&` or `||`. Steps that `uses:` an action, and those named with
`--skip`, are skipped (and listed). Exits non-zero on the first failing step.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import yaml

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def substitute(text, values):
    def value(match):
        expr = match.group(1)
        if expr not in values:
            sys.exit(f"no value for ${{{{ {expr} }}}} (give --set '{expr}=...')")
        return values[expr]

    return EXPRESSION.sub(value, str(text))


def holds(condition, values):
    """Evaluates `a == 'x'`, `a != 'x'`, joined by && or ||."""
    if condition is None:
        return True
    condition = EXPRESSION.sub(lambda m: m.group(1), str(condition)).strip()
    for disjunct in condition.split("||"):
        ok = True
        for term in disjunct.split("&&"):
            m = re.fullmatch(r"\s*([\w.\-]+)\s*(==|!=)\s*'([^']*)'\s*", term)
            if not m:
                sys.exit(f"unsupported condition: {term!r}")
            name, op, literal = m.groups()
            if name not in values:
                sys.exit(f"no value for {name} in condition (give --set '{name}=...')")
            ok = ok and ((values[name] == literal) == (op == "=="))
        if ok:
            return True
    return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workflow")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--skip", action="append", default=[])
    args = parser.parse_args()
    values = dict(item.split("=", 1) for item in args.set)
    with open(args.workflow) as f:
        workflow = yaml.safe_load(f)

    base_env = dict(os.environ)
    for name, value in (workflow.get("env") or {}).items():
        base_env[name] = substitute(value, values)
    for job_name, job in workflow["jobs"].items():
        if not holds(job.get("if"), values):
            print(f"job {job_name}: skipped (if: {job.get('if')})", flush=True)
            continue
        env = dict(base_env)
        for name, value in (job.get("env") or {}).items():
            env[name] = substitute(value, values)
        for step in job["steps"]:
            name = step.get("name") or step.get("uses") or "step"
            if "uses" in step or name in args.skip or not holds(step.get("if"), values):
                print(f"job {job_name}: step {name!r} skipped", flush=True)
                continue
            step_env = dict(env)
            for key, value in (step.get("env") or {}).items():
                step_env[key] = substitute(value, values)
            with tempfile.NamedTemporaryFile("r", delete=False) as github_env:
                step_env["GITHUB_ENV"] = github_env.name
            print(f"job {job_name}: step {name!r}", flush=True)
            result = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                 substitute(step["run"], values)],
                cwd=args.workdir, env=step_env)
            with open(github_env.name) as f:
                for line in f:
                    if "=" in line:
                        key, value = line.rstrip("\n").split("=", 1)
                        env[key] = value
            os.unlink(github_env.name)
            if result.returncode != 0:
                sys.exit(f"job {job_name}: step {name!r} failed with {result.returncode}")


if __name__ == "__main__":
    main()
