#ifndef VAULT_CMALLOC_SHIM_H
#define VAULT_CMALLOC_SHIM_H
// glibc's malloc tuning (mallopt), for the daemons' large transfer buffers.
#include <malloc.h>
#endif
