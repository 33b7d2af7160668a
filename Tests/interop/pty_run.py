#!/usr/bin/env python3
"""Runs a command on a pseudo-terminal and answers its prompts, as a person at a terminal would.

Usage: pty_run.py COMMAND [ARGS...]
The answers come from the environment (PTY_ANSWERS, separated by newlines), not from arguments. An answer is typed
only when the output since the previous answer ends in a prompt (": " with nothing after it). Prints everything the
terminal showed, then a last line "exit=N" (the child is killed after 60 s without finishing).
"""
import os, pty, select, signal, sys, time

answers = [a for a in os.environ.get("PTY_ANSWERS", "").split("\n") if a]
env = {k: v for k, v in os.environ.items() if k != "PTY_ANSWERS"}
pid, fd = pty.fork()
if pid == 0:
    os.execve(sys.argv[1], sys.argv[1:], env)
shown = b""
since_answer = b""
deadline = time.time() + 60
killed = False
while True:
    remaining = deadline - time.time()
    if remaining <= 0:
        os.kill(pid, signal.SIGKILL)
        killed = True
        break
    ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
    if not ready:
        continue
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    shown += chunk
    since_answer += chunk
    if answers and since_answer.endswith(b": "):
        os.write(fd, answers.pop(0).encode() + b"\n")
        since_answer = b""
_, status = os.waitpid(pid, 0)
sys.stdout.write(shown.decode(errors="replace"))
print("\nexit=%d%s" % (os.waitstatus_to_exitcode(status), " (killed after 60 s)" if killed else ""))
