#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[512];

const char *mattn_strerror(int status)
{
    switch (status) {
#define MATTN_STATUS_MSG_(name, value, msg) \
    case value:                             \
        return msg;
        MATTN_STATUS_MAP(MATTN_STATUS_MSG_)
#undef MATTN_STATUS_MSG_
    }
    return "unknown error";
}

const char *mattn_err_name(int status)
{
    switch (status) {
#define MATTN_STATUS_NAME_(name, value, msg) \
    case value:                              \
        return "MATTN_" #name;
        MATTN_STATUS_MAP(MATTN_STATUS_NAME_)
#undef MATTN_STATUS_NAME_
    }
    return "MATTN_UNKNOWN";
}

const char *mattn_last_error(void)
{
    return last_error;
}

unsigned mattn_version(void)
{
    return MATTN_VERSION_HEX;
}

int mattn__fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

void mattn__set_last_error(const char *msg)
{
    snprintf(last_error, sizeof last_error, "%s", msg);
}
