#!/usr/bin/env python3
"""Runs a command on a pseudo-terminal and answers its prompts, as a person at a terminal would.

Usage: pty_run.py COMMAND [ARGS...]
The answers come from the environment (PTY_ANSWERS, separated by newlines), not from arguments. Prints everything
the terminal showed, then a last line "exit=N".
"""
import os, pty, sys, time

answers = [a for a in os.environ.get("PTY_ANSWERS", "").split("\n") if a]
env = {k: v for k, v in os.environ.items() if k != "PTY_ANSWERS"}
pid, fd = pty.fork()
if pid == 0:
    os.execve(sys.argv[1], sys.argv[1:], env)
shown = b""
deadline = time.time() + 60
while time.time() < deadline:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    shown += chunk
    if answers and shown.rstrip().endswith(b":"):
        os.write(fd, answers.pop(0).encode() + b"\n")
_, status = os.waitpid(pid, 0)
sys.stdout.write(shown.decode(errors="replace"))
print("\nexit=%d" % os.waitstatus_to_exitcode(status))
