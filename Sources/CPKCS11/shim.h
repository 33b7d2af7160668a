// The standard PKCS#11 v2.40 header as shipped by p11-kit (Debian libp11-kit-dev). Only the types, constants and
// the function-list layout are used: modules are loaded at run time with dlopen, never linked.
#include <p11-kit/pkcs11.h>
#include <dlfcn.h>
