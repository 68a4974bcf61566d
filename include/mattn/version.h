/* mattn version.
 *
 * ABI rule: while MAJOR is 0, every MINOR release may change the ABI, and the
 * shared library's soname carries MAJOR.MINOR (libmattn.so.0.1) so a program
 * never loads a library it was not built against. From 1.0 on, MINOR releases
 * only add functions and enum values; a change to the layout of any public
 * struct bumps MAJOR (and the soname). PATCH releases change no declaration.
 * Source rule, always: initialise option structs with their *_default()
 * function, so new fields get their neutral value. */
#ifndef MATTN_VERSION_H_
#define MATTN_VERSION_H_

#define MATTN_VERSION_MAJOR 0
#define MATTN_VERSION_MINOR 1
#define MATTN_VERSION_PATCH 0

#define MATTN_VERSION_HEX \
    ((MATTN_VERSION_MAJOR << 16) | (MATTN_VERSION_MINOR << 8) | MATTN_VERSION_PATCH)

#endif
