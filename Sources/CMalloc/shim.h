#ifndef VAULT_CMALLOC_SHIM_H
#define VAULT_CMALLOC_SHIM_H
// glibc's process tuning: malloc (mallopt), for the daemons' large transfer buffers, and prctl, which is variadic
// and so has fixed-argument wrappers here for Swift.
#include <malloc.h>
#include <sys/prctl.h>

static inline int vault_set_dumpable(int dumpable) { return prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0); }
static inline int vault_get_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0); }
#endif
