/* switchboard SDK: include this one header to write a provider plugin. */
#ifndef SWITCHBOARD_H
#define SWITCHBOARD_H

#include <switchboard/services.h>
#include <switchboard/plugin.h>

#endif
