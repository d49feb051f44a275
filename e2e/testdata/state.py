# state.py OUT: keeps its state in memory (a counter and a dict) and appends
# one line per tick to OUT, kept open: "N total" where total is the sum of
# the squares 1..N as the dict holds them. A line "ready" goes first.
import sys
import time

out = open(sys.argv[1], "a", buffering=1)
squares = {}
n = 0
out.write("ready\n")
while True:
    n += 1
    squares[n] = n * n
    out.write("%d %d\n" % (n, sum(squares.values())))
    time.sleep(0.03)
