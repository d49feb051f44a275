/* bench_heap: touches N MiB of heap-like memory (30% zero pages, 40%
 * repetitive text, 30% random), prints "ready", then waits. Used by the
 * checkpoint/restore benchmark. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
int main(int argc, char **argv) {
    size_t n = (size_t)atol(argv[1]) << 20;
    unsigned char *buf = malloc(n);
    unsigned long x = 88172645463325252UL;
    for (size_t p = 0; p < n; p += 4096) {
        unsigned char *pg = buf + p;
        int kind = (p / 4096) % 10;
        if (kind < 3) { memset(pg, 0, 4096); continue; }          /* zero page */
        if (kind < 7) { for (int i = 0; i < 4096; i++) pg[i] = "the quick brown fox jumps over the lazy dog "[ (i + p/4096) % 44]; continue; }
        for (int i = 0; i < 4096; i += 8) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; memcpy(pg + i, &x, 8); }
    }
    printf("ready\n"); fflush(stdout);
    for (;;) pause();
}
