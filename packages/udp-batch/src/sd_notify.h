/* sd_notify.c: adds sdNotify to the binding's exports. */
#ifndef BEACON_SD_NOTIFY_H
#define BEACON_SD_NOTIFY_H
#include <node_api.h>

void sd_notify_register(napi_env env, napi_value exports);

#endif
