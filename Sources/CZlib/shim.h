#ifndef VAULT_CZLIB_SHIM_H
#define VAULT_CZLIB_SHIM_H
#include <zlib.h>
#endif
