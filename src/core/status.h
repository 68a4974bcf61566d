/* Private error helpers: every failure path records a detailed message. */
#ifndef MATTN_CORE_STATUS_H
#define MATTN_CORE_STATUS_H

#include "mattn.h"

/* Records printf-style detail as this thread's last error and returns status. */
int mattn__fail(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Records a message without changing the status (used when agreeing on an
 * error that another rank detected). */
void mattn__set_last_error(const char *msg);

#endif
