#include "cidr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct net {
    int family;
    unsigned char addr[16];
    int bits;
};

static int parse(const char *s, struct net *n)
{
    char host[64];
    const char *slash = strchr(s, '/');
    size_t len = slash ? (size_t)(slash - s) : strlen(s);
    if (len >= sizeof(host))
        return -1;
    memcpy(host, s, len);
    host[len] = '\0';
    n->family = strchr(host, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(n->family, host, n->addr) != 1)
        return -1;
    int max = n->family == AF_INET ? 32 : 128;
    n->bits = max;
    if (slash) {
        char *end;
        long b = strtol(slash + 1, &end, 10);
        if (*end || end == slash + 1 || b < 0 || b > max)
            return -1;
        n->bits = (int)b;
    }
    return 0;
}

int sbh_cidr_valid(const char *s)
{
    struct net n;
    return parse(s, &n);
}

static int inside(const struct net *net, const struct net *a)
{
    if (net->family != a->family)
        return 0;
    int full = net->bits / 8, rest = net->bits % 8;
    if (memcmp(net->addr, a->addr, (size_t)full) != 0)
        return 0;
    if (!rest)
        return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (net->addr[full] & mask) == (a->addr[full] & mask);
}

int sbh_cidr_match(const json_t *networks, const char *addr)
{
    struct net a, net;
    size_t i;
    json_t *v;
    if (parse(addr, &a) < 0)
        return 0;
    /* An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d. */
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (a.family == AF_INET6 && !memcmp(a.addr, mapped, 12)) {
        memmove(a.addr, a.addr + 12, 4);
        a.family = AF_INET;
        a.bits = 32;
    }
    json_array_foreach (networks, i, v)
        if (json_is_string(v) && parse(json_string_value(v), &net) == 0 && inside(&net, &a))
            return 1;
    return 0;
}
