/* Reads every path named on stdin through libstoker_c and prints, per path,
 * "<size> <fnv1a64 hex>" of stoker_read_file, after checking that chunked
 * stoker_read calls and stoker_stat agree with it. Then checks that a
 * missing path fails with -ENOENT and a message naming it.
 * usage: read_tree SOCKET < paths */
#include "stoker.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fnv(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ull; }
    return h;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: read_tree SOCKET < paths\n"); return 2; }
    stoker_client *c = stoker_connect(argv[1]);
    if (!c) { fprintf(stderr, "connect: %s\n", stoker_last_error()); return 1; }
    char path[4096];
    while (fgets(path, sizeof path, stdin)) {
        path[strcspn(path, "\n")] = 0;
        if (!path[0]) continue;
        uint8_t *data = NULL; size_t len = 0;
        int rc = stoker_read_file(c, path, &data, &len);
        if (rc != 0) { fprintf(stderr, "%s: %s (%s)\n", path, stoker_last_error(), stoker_strerror(rc)); return 1; }
        stoker_attr a;
        if (stoker_stat(c, path, &a) != 0 || a.size != len || a.is_dir) { fprintf(stderr, "%s: stat disagrees\n", path); return 1; }
        uint8_t *buf = malloc(len + 16);
        size_t got = 0, step = len / 3 + 1;
        while (got < len) {
            int64_t n = stoker_read(c, path, got, buf + got, step);
            if (n <= 0) { fprintf(stderr, "%s: read at %zu: %lld %s\n", path, got, (long long)n, stoker_last_error()); return 1; }
            got += (size_t)n;
        }
        if (stoker_read(c, path, len, buf, 16) != 0 || memcmp(buf, data, len) != 0) { fprintf(stderr, "%s: chunked reads differ\n", path); return 1; }
        printf("%zu %016llx\n", len, (unsigned long long)fnv(data, len));
        free(buf);
        stoker_free(data, len);
    }
    stoker_attr a;
    int rc = stoker_stat(c, "/m/no/such/file", &a);
    if (rc != -ENOENT || !strstr(stoker_last_error(), "/m/no/such/file")) {
        fprintf(stderr, "missing file: rc %d, message '%s'\n", rc, stoker_last_error());
        return 1;
    }
    if (stoker_read(NULL, "/m/x", 0, path, 1) != -EINVAL) { fprintf(stderr, "NULL client accepted\n"); return 1; }
    stoker_close(c);
    return 0;
}
