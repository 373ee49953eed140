/* Address allow-lists: IPv4 and IPv6 networks in CIDR form. */
#ifndef SBH_CIDR_H
#define SBH_CIDR_H

#include <jansson.h>

/* 0 when s is "address" or "address/bits" (IPv4 or IPv6), else -1. */
int sbh_cidr_valid(const char *s);

/* 1 when addr (text form) is inside one of the networks (array of strings). */
int sbh_cidr_match(const json_t *networks, const char *addr);

#endif
