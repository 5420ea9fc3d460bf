/* stoker.h: C ABI of the stoker shared-memory client (libstoker_c.so).
 *
 * Every call that can fail returns a negative errno (or NULL) and sets a
 * one-line message for the calling thread: stoker_last_error().
 * A stoker_client is safe to use from many threads at once. After fork()
 * the child's first call opens a session of its own.
 */
#ifndef STOKER_H
#define STOKER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct stoker_client stoker_client;

typedef struct stoker_attr {
    uint64_t size;
    int64_t mtime_ns;
    int32_t is_dir; /* 1 for a directory, 0 for a file */
} stoker_attr;

/* Attach to the engine on `socket` (NULL: $STOKER_SOCKET or /tmp/stoker.sock).
 * Returns NULL on failure (see stoker_last_error). */
stoker_client *stoker_connect(const char *socket);

/* Detach and free the client. NULL is ignored. */
void stoker_close(stoker_client *c);

/* Read up to `len` bytes of `path` at `off` into `buf`.
 * Returns the bytes read (short at end of file) or -errno. */
int64_t stoker_read(stoker_client *c, const char *path, uint64_t off, void *buf, size_t len);

/* Read a whole file into a new buffer: *out and *out_len are set on success;
 * release the buffer with stoker_free(*out, *out_len). Returns 0 or -errno. */
int stoker_read_file(stoker_client *c, const char *path, uint8_t **out, size_t *out_len);

/* Release a buffer from stoker_read_file. NULL is ignored. */
void stoker_free(uint8_t *buf, size_t len);

/* Attributes of `path`. Returns 0 or -errno. */
int stoker_stat(stoker_client *c, const char *path, stoker_attr *out);

/* The calling thread's message for its last failed call ("" if none).
 * Valid until the thread's next stoker call. */
const char *stoker_last_error(void);

/* A static description of an errno (positive or negative). */
const char *stoker_strerror(int errnum);

#ifdef __cplusplus
}
#endif

#endif /* STOKER_H */
