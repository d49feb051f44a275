# threads.py: a python3 program with threads.
#
# Four worker threads add to shared state under one threading.Lock: each
# adds to its own count and to the total, so that, under the lock, the
# counts add up to the total. A "waiter" thread waits on a
# threading.Condition with a 0.2 s timeout in a loop and logs "woken gen=G"
# when the main thread notifies it (on SIGUSR1). The main thread logs
# "tick N total=T counts=a,b,c,d" every 0.1 s, and "FAIL ..." if the counts
# do not add up. Each line is one write(2) on stdout (a file).
import os
import signal
import threading
import time


def say(line):
    os.write(1, (line + "\n").encode())


lock = threading.Lock()
counts = [0, 0, 0, 0]
total = 0
cond = threading.Condition()
gen = 0
notify = False


def worker(i):
    global total
    while True:
        with lock:
            counts[i] += 1
            total += 1
        time.sleep(0.001)


def waiter():
    seen = 0
    while True:
        with cond:
            cond.wait(timeout=0.2)
            if gen != seen:
                seen = gen
                say("woken gen=%d" % seen)


def on_usr1(signum, frame):
    global notify
    notify = True


for i in range(4):
    threading.Thread(target=worker, args=(i,), name="worker%d" % i, daemon=True).start()
threading.Thread(target=waiter, name="waiter", daemon=True).start()
signal.signal(signal.SIGUSR1, on_usr1)
say("ready pid=%d" % os.getpid())
tick = 0
while True:
    time.sleep(0.1)
    if notify:
        notify = False
        with cond:
            gen += 1
            cond.notify()
    with lock:
        t, c = total, list(counts)
    if sum(c) != t:
        say("FAIL counts %r add up to %d, total %d" % (c, sum(c), t))
        os._exit(1)
    tick += 1
    say("tick %d total=%d counts=%s" % (tick, t, ",".join(map(str, c))))
