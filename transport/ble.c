/*
 * ble.c — BlueZ advertising, discovery and LE L2CAP sockets on libevent (ble.h).
 *
 * One sd-bus connection to the system bus; its fd and next timeout become one libevent fd event
 * and one timer, re-armed after every sd_bus_process. Calls to bluetoothd are asynchronous
 * except the first GetManagedObjects (bounded by FM_BLE_CALL_TIMEOUT_MS), which finds the adapter.
 * Order at start: discovery first, then the advertisement (btvirt, the emulated air of the tests,
 * delivers a report only when scanning or advertising is switched on, so scan-then-advertise is
 * the order in which nobody misses anybody).
 * Devices are tracked by their object path under our adapter only (one bluetoothd serves every
 * adapter on the host, and other adapters' devices are not reachable from ours).
 * Two things keep a peer able to reach us, and us it, while links come and go: the controller
 * stops advertising when a link is made (Linux turns it on again only when a peripheral link
 * ends), so the advertisement is swapped after each new link (adv_refresh); and an LE connect
 * goes ahead on the peer's next advertising report, which a duplicate-filtering scan never
 * delivers for a device it has reported already (btvirt reports an advertiser only when scanning
 * or advertising is switched on), so discovery is switched off and on after each dial (rescan).
 * And one link carries channels opened from one side only: Linux 6.1 finds the channel an LE
 * connection response is for by its signalling identifier alone, which each side draws from a
 * counter of its own per link (from 1), and a channel accepted from the peer still holds the
 * identifier of the peer's request. So a channel we open on a link where the peer opened one can
 * take the answer meant for ours: our connect never completes, the accepted channel's data goes
 * to the wrong place, and closing the stuck socket when the link later drops can BUG in
 * hci_chan_del. The channel sockets are remembered per peer (socks) to keep to that.
 */
#define _GNU_SOURCE /* accept4 */
#include "transport/ble.h"

#include "node/node.h"

#include <bluetooth/bluetooth.h>
#include <bluetooth/l2cap.h>
#include <errno.h>
#include <event2/event.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-bus.h>
#include <time.h>
#include <unistd.h>

#define ADV_PATH "/org/fieldmesh/ble/adv0"

typedef struct ble_dev {
    bool used, random, has_payload;
    bool connected; /* Device1.Connected: an LE link to it is up (either role) */
    uint64_t up_ms; /* when it last became connected (mono_ms) */
    char path[96];
    uint8_t mac[6];
    uint8_t payload[FM_BLE_PAYLOAD];
    char reported[FM_NODE_MAX_ADDR + 1]; /* "" while not reported as found */
} ble_dev;

/* A channel socket this module made (fm_ble_connect) or accepted, now the caller's: the fd and
 * its inode tell whether it is still that socket (the caller closes it without telling us). */
typedef struct ble_sock {
    bool used, outbound;
    uint8_t mac[6];
    int fd;
    ino_t ino;
} ble_sock;

struct fm_ble {
    struct event_base *base;
    fm_ble_cb cb;
    sd_bus *bus;
    struct event *bus_ev, *bus_timer, *listen_ev, *adv_timer;
    short bus_armed;
    sd_bus_slot *obj_slot, *om_slot, *match_added, *match_removed, *match_changed, *match_owner;
    char adapter_path[64];
    uint8_t mac[6];
    bool random;
    uint16_t psm;
    int listen_fd;
    uint8_t mesh[FM_BLE_MESH_PREFIX];
    uint8_t digest[FM_HASH_BYTES];
    uint8_t adv_payload[FM_BLE_PAYLOAD]; /* what the registered advertisement says */
    bool adv_registered, adv_busy, adv_dirty, dead;
    bool quiet;       /* during fm_ble_open: devices are recorded, reported after it */
    bool bluez_gone;  /* org.bluez has no owner: bluetoothd stopped or restarting */
    bool discovering; /* our StartDiscovery succeeded (and bluetoothd has not gone since) */
    bool rescan_busy; /* a StopDiscovery of rescan is under way */
    struct event *rescan_timer;
    int restart_tries; /* > 0: discovery is being restarted for a new bluetoothd */
    struct event *restart_timer;
    struct event *start_ev; /* reports the devices bluetoothd already knew */
    char local[64];
    ble_dev devs[FM_BLE_MAX_DEVICES];
    ble_sock socks[FM_BLE_MAX_SOCKS];
};

static void blog(fm_ble *b, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void adv_refresh(fm_ble *b);

static void blog(fm_ble *b, int level, const char *fmt, ...)
{
    if (!b->cb.log)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    b->cb.log(b->cb.ctx, level, line);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- channel sockets ------------------------------------------------------------------------ */

/* Still the socket we handed out: not closed, and its number not reused for another file. */
static bool sock_same(const ble_sock *k)
{
    struct stat st;
    return k->used && fstat(k->fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == k->ino;
}

/* 1: the channel is up (the kernel knows its send MTU only once it is), 0: not (yet, or any
 * more), -1: cannot tell (a kernel before BT_SNDMTU). */
static int sock_up(int fd)
{
    uint16_t mtu = 0;
    socklen_t len = sizeof mtu;
    if (getsockopt(fd, SOL_BLUETOOTH, BT_SNDMTU, &mtu, &len) == 0)
        return 1;
    return errno == ENOPROTOOPT ? -1 : 0;
}

/* Remembers a channel socket; with every slot in use, slot 0 is given up (best effort). */
static void sock_note(fm_ble *b, bool outbound, const uint8_t mac[6], int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return;
    ble_sock *k = &b->socks[0];
    for (size_t i = 0; i < FM_BLE_MAX_SOCKS; i++)
        if (!sock_same(&b->socks[i])) {
            k = &b->socks[i];
            break;
        }
    *k = (ble_sock){.used = true, .outbound = outbound, .fd = fd, .ino = st.st_ino};
    memcpy(k->mac, mac, 6);
}

/* A channel the peer opened to us is up: we open none to it (see the file comment). */
static bool inbound_up(const fm_ble *b, const uint8_t mac[6])
{
    for (size_t i = 0; i < FM_BLE_MAX_SOCKS; i++) {
        const ble_sock *k = &b->socks[i];
        if (!k->outbound && !memcmp(k->mac, mac, 6) && sock_same(k) && sock_up(k->fd) != 0)
            return true;
    }
    return false;
}

/* The peer's channel came first: our connects to it still under way are given up (the caller
 * sees them fail), while the link is sound, rather than left to hang on it. */
static void drop_connects(fm_ble *b, const uint8_t mac[6], const char *addr)
{
    for (size_t i = 0; i < FM_BLE_MAX_SOCKS; i++) {
        ble_sock *k = &b->socks[i];
        if (k->outbound && !memcmp(k->mac, mac, 6) && sock_same(k) && sock_up(k->fd) == 0) {
            blog(b, FM_LOG_DEBUG, "ble: %s opened a channel first; our connect to it ends", addr);
            shutdown(k->fd, SHUT_RDWR);
            k->used = false;
        }
    }
}

/* ---- addresses ------------------------------------------------------------------------------ */

static void mac_text(const uint8_t mac[6], char out[18])
{
    snprintf(out, 18, "%02X:%02X:%02X:%02X:%02X:%02X", mac[0], mac[1], mac[2], mac[3], mac[4],
             mac[5]);
}

static int mac_parse(const char *s, char sep, uint8_t mac[6])
{
    for (int i = 0; i < 6; i++) {
        unsigned v;
        char c = 0;
        if (sscanf(s + 3 * i, "%2x%c", &v, &c) < 1 || (i < 5 && c != sep))
            return FM_EINVAL;
        mac[i] = (uint8_t)v;
    }
    return 0;
}

/* bdaddr_t is little-endian; our mac[] is in text order. */
static void to_bdaddr(const uint8_t mac[6], bdaddr_t *ba)
{
    for (int i = 0; i < 6; i++)
        ba->b[i] = mac[5 - i];
}

int fm_ble_parse_addr(const char *addr, uint8_t mac[6], bool *random, uint16_t *psm)
{
    size_t pl = strlen(FM_BLE_ADDR_PREFIX);
    if (!addr || strncmp(addr, FM_BLE_ADDR_PREFIX, pl) != 0 || strlen(addr) < pl + 17 + 3)
        return FM_EINVAL;
    const char *p = addr + pl;
    if (mac_parse(p, ':', mac) || p[17] != '/')
        return FM_EINVAL;
    p += 18;
    if (!strncmp(p, "public/", 7))
        *random = false;
    else if (!strncmp(p, "random/", 7))
        *random = true;
    else
        return FM_EINVAL;
    char *end;
    unsigned long v = strtoul(p + 7, &end, 10);
    if (end == p + 7 || *end || v > 0xffff)
        return FM_EINVAL;
    *psm = (uint16_t)v;
    return 0;
}

static void addr_format(char *out, size_t n, const uint8_t mac[6], bool random, unsigned psm)
{
    char m[18];
    mac_text(mac, m);
    snprintf(out, n, "%s%s/%s/%u", FM_BLE_ADDR_PREFIX, m, random ? "random" : "public", psm);
}

/* ---- sd-bus on libevent --------------------------------------------------------------------- */

static void bus_pump(fm_ble *b);

static void on_bus(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    bus_pump(arg);
}

static void bus_arm(fm_ble *b)
{
    int ev = sd_bus_get_events(b->bus);
    short want = (short)(EV_READ | ((ev > 0 && (ev & POLLOUT)) ? EV_WRITE : 0));
    if (want != b->bus_armed || !b->bus_ev) {
        if (b->bus_ev)
            event_free(b->bus_ev);
        b->bus_ev = event_new(b->base, sd_bus_get_fd(b->bus), want | EV_PERSIST, on_bus, b);
        if (b->bus_ev)
            event_add(b->bus_ev, NULL);
        b->bus_armed = want;
    }
    uint64_t at;
    evtimer_del(b->bus_timer);
    if (sd_bus_get_timeout(b->bus, &at) >= 0 && at != UINT64_MAX) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
        uint64_t us = at > now ? at - now : 0;
        struct timeval tv = {(time_t)(us / 1000000u), (suseconds_t)(us % 1000000u)};
        evtimer_add(b->bus_timer, &tv);
    }
}

/* Runs every pending bus callback, then waits on the bus again. The bus dying (dbus-daemon
 * gone) ends BLE discovery for this run; open channels are the caller's and carry on. */
static void bus_pump(fm_ble *b)
{
    if (b->dead)
        return;
    int r;
    while ((r = sd_bus_process(b->bus, NULL)) > 0)
        ;
    if (r < 0) {
        blog(b, FM_LOG_WARN, "ble: D-Bus connection lost (%s); BLE discovery stops", strerror(-r));
        b->dead = true;
        if (b->bus_ev)
            event_del(b->bus_ev);
        evtimer_del(b->bus_timer);
        return;
    }
    bus_arm(b);
}

/* ---- devices -------------------------------------------------------------------------------- */

static ble_dev *dev_find(fm_ble *b, const char *path, bool create)
{
    size_t al = strlen(b->adapter_path);
    if (strncmp(path, b->adapter_path, al) != 0 || strncmp(path + al, "/dev_", 5) != 0 ||
        strlen(path) >= sizeof b->devs[0].path)
        return NULL; /* another adapter's, or not a device */
    ble_dev *free_slot = NULL;
    for (size_t i = 0; i < FM_BLE_MAX_DEVICES; i++) {
        ble_dev *d = &b->devs[i];
        if (d->used && !strcmp(d->path, path))
            return d;
        if (!d->used && !free_slot)
            free_slot = d;
    }
    if (!create || !free_slot)
        return NULL;
    uint8_t mac[6];
    if (mac_parse(path + al + 5, '_', mac))
        return NULL;
    memset(free_slot, 0, sizeof *free_slot);
    free_slot->used = true;
    snprintf(free_slot->path, sizeof free_slot->path, "%s", path);
    memcpy(free_slot->mac, mac, 6);
    return free_slot;
}

static void dev_unreport(fm_ble *b, ble_dev *d)
{
    if (!d->reported[0])
        return;
    char addr[sizeof d->reported];
    memcpy(addr, d->reported, sizeof addr);
    d->reported[0] = 0;
    blog(b, FM_LOG_DEBUG, "ble: lost %s", addr);
    b->cb.lost(b->cb.ctx, addr);
}

/* Reports a device whose payload names our mesh; un-reports one that stopped doing so. */
static void dev_report(fm_ble *b, ble_dev *d)
{
    const uint8_t *p = d->payload;
    if (b->quiet)
        return;
    if (!d->has_payload || p[0] != FM_BLE_VERSION || p[1] < FM_BLE_PSM_MIN ||
        memcmp(p + 2, b->mesh, FM_BLE_MESH_PREFIX) != 0) {
        dev_unreport(b, d);
        return;
    }
    char addr[sizeof d->reported];
    addr_format(addr, sizeof addr, d->mac, d->random, p[1]);
    if (d->reported[0] && strcmp(d->reported, addr) != 0)
        dev_unreport(b, d); /* new PSM or address type */
    uint8_t dg[FM_HASH_BYTES] = {0};
    const uint8_t *theirs = p + 2 + FM_BLE_MESH_PREFIX;
    if (memcmp(theirs, b->digest, FM_BLE_DIGEST_PREFIX) == 0)
        memcpy(dg, b->digest, FM_HASH_BYTES);
    else
        memcpy(dg, theirs, FM_BLE_DIGEST_PREFIX);
    if (!d->reported[0]) {
        blog(b, FM_LOG_DEBUG, "ble: found %s", addr);
        adv_refresh(b); /* it may have missed ours: see adv_refresh */
    }
    snprintf(d->reported, sizeof d->reported, "%s", addr);
    b->cb.found(b->cb.ctx, addr, dg);
}

static void dev_remove(fm_ble *b, const char *path)
{
    ble_dev *d = dev_find(b, path, false);
    if (!d)
        return;
    dev_unreport(b, d);
    memset(d, 0, sizeof *d);
}

/* ServiceData a{sv}, positioned at the variant's contents. */
static int read_service_data(fm_ble *b, ble_dev *d, sd_bus_message *m)
{
    int r = sd_bus_message_enter_container(m, 'a', "{sv}");
    if (r <= 0)
        return r;
    bool found = false;
    while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
        const char *uuid;
        const void *data;
        size_t len = 0;
        if ((r = sd_bus_message_read(m, "s", &uuid)) < 0)
            return r;
        if (!strcasecmp(uuid, FM_BLE_SERVICE_UUID) &&
            sd_bus_message_enter_container(m, 'v', "ay") > 0) {
            if ((r = sd_bus_message_read_array(m, 'y', &data, &len)) < 0)
                return r;
            sd_bus_message_exit_container(m);
            if (len == FM_BLE_PAYLOAD) {
                memcpy(d->payload, data, FM_BLE_PAYLOAD);
                found = true;
            }
        } else if ((r = sd_bus_message_skip(m, "v")) < 0) {
            return r;
        }
        sd_bus_message_exit_container(m);
    }
    sd_bus_message_exit_container(m);
    d->has_payload = found;
    return r;
}

/* Device1 properties a{sv} (all of them, or the changed ones). */
static int read_device(fm_ble *b, const char *path, sd_bus_message *m)
{
    ble_dev *d = dev_find(b, path, true);
    if (!d)
        return sd_bus_message_skip(m, "a{sv}");
    int r = sd_bus_message_enter_container(m, 'a', "{sv}");
    if (r <= 0)
        return r;
    bool sd_seen = false, was_connected = d->connected;
    while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
        const char *key, *s;
        if ((r = sd_bus_message_read(m, "s", &key)) < 0)
            return r;
        if (!strcmp(key, "AddressType") && sd_bus_message_enter_container(m, 'v', "s") > 0) {
            if ((r = sd_bus_message_read(m, "s", &s)) < 0)
                return r;
            d->random = !strcmp(s, "random");
            sd_bus_message_exit_container(m);
        } else if (!strcmp(key, "Connected") && sd_bus_message_enter_container(m, 'v', "b") > 0) {
            int v = 0;
            if ((r = sd_bus_message_read(m, "b", &v)) < 0)
                return r;
            d->connected = v;
            if (v && !was_connected)
                d->up_ms = mono_ms();
            sd_bus_message_exit_container(m);
        } else if (!strcmp(key, "ServiceData") &&
                   sd_bus_message_enter_container(m, 'v', "a{sv}") > 0) {
            if ((r = read_service_data(b, d, m)) < 0)
                return r;
            sd_bus_message_exit_container(m);
            sd_seen = true;
        } else if ((r = sd_bus_message_skip(m, "v")) < 0) {
            return r;
        }
        sd_bus_message_exit_container(m);
    }
    sd_bus_message_exit_container(m);
    if (d->connected && !was_connected)
        adv_refresh(b);
    if (sd_seen || d->reported[0])
        dev_report(b, d);
    return r;
}

/* One object's interfaces a{sa{sv}}: devices are read; everything else skipped. */
static int read_interfaces(fm_ble *b, const char *path, sd_bus_message *m)
{
    int r = sd_bus_message_enter_container(m, 'a', "{sa{sv}}");
    if (r <= 0)
        return r;
    while ((r = sd_bus_message_enter_container(m, 'e', "sa{sv}")) > 0) {
        const char *iface;
        if ((r = sd_bus_message_read(m, "s", &iface)) < 0)
            return r;
        r = !strcmp(iface, "org.bluez.Device1") ? read_device(b, path, m)
                                                : sd_bus_message_skip(m, "a{sv}");
        if (r < 0)
            return r;
        sd_bus_message_exit_container(m);
    }
    sd_bus_message_exit_container(m);
    return r;
}

static int on_added(sd_bus_message *m, void *arg, sd_bus_error *err)
{
    (void)err;
    const char *path;
    if (sd_bus_message_read(m, "o", &path) >= 0)
        read_interfaces(arg, path, m);
    return 0;
}

static int on_removed(sd_bus_message *m, void *arg, sd_bus_error *err)
{
    (void)err;
    const char *path;
    char **ifaces = NULL;
    if (sd_bus_message_read(m, "o", &path) >= 0 && sd_bus_message_read_strv(m, &ifaces) >= 0)
        for (char **i = ifaces; *i; i++)
            if (!strcmp(*i, "org.bluez.Device1"))
                dev_remove(arg, path);
    for (char **i = ifaces; i && *i; i++)
        free(*i);
    free(ifaces);
    return 0;
}

static int on_changed(sd_bus_message *m, void *arg, sd_bus_error *err)
{
    (void)err;
    const char *iface;
    if (sd_bus_message_read(m, "s", &iface) >= 0 && !strcmp(iface, "org.bluez.Device1"))
        read_device(arg, sd_bus_message_get_path(m), m);
    return 0;
}

/* ---- the advertisement object --------------------------------------------------------------- */

static int prop_type(sd_bus *bus, const char *path, const char *iface, const char *prop,
                     sd_bus_message *reply, void *arg, sd_bus_error *err)
{
    return sd_bus_message_append(reply, "s", "peripheral");
}

static int prop_sdata(sd_bus *bus, const char *path, const char *iface, const char *prop,
                      sd_bus_message *reply, void *arg, sd_bus_error *err)
{
    fm_ble *b = arg;
    int r;
    if ((r = sd_bus_message_open_container(reply, 'a', "{sv}")) < 0 ||
        (r = sd_bus_message_open_container(reply, 'e', "sv")) < 0 ||
        (r = sd_bus_message_append(reply, "s", FM_BLE_SERVICE_UUID)) < 0 ||
        (r = sd_bus_message_open_container(reply, 'v', "ay")) < 0 ||
        (r = sd_bus_message_append_array(reply, 'y', b->adv_payload, FM_BLE_PAYLOAD)) < 0 ||
        (r = sd_bus_message_close_container(reply)) < 0 ||
        (r = sd_bus_message_close_container(reply)) < 0)
        return r;
    return sd_bus_message_close_container(reply);
}

static int prop_true(sd_bus *bus, const char *path, const char *iface, const char *prop,
                     sd_bus_message *reply, void *arg, sd_bus_error *err)
{
    return sd_bus_message_append(reply, "b", 1);
}

static int adv_release(sd_bus_message *m, void *arg, sd_bus_error *err)
{
    fm_ble *b = arg;
    b->adv_registered = false;
    blog(b, FM_LOG_INFO, "ble: bluetoothd released our advertisement");
    return sd_bus_reply_method_return(m, "");
}

static const sd_bus_vtable adv_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("Release", "", "", adv_release, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_PROPERTY("Type", "s", prop_type, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("ServiceData", "a{sv}", prop_sdata, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("Discoverable", "b", prop_true, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_VTABLE_END,
};

static void make_payload(const fm_ble *b, uint8_t out[FM_BLE_PAYLOAD])
{
    out[0] = FM_BLE_VERSION;
    out[1] = (uint8_t)b->psm;
    memcpy(out + 2, b->mesh, FM_BLE_MESH_PREFIX);
    memcpy(out + 2 + FM_BLE_MESH_PREFIX, b->digest, FM_BLE_DIGEST_PREFIX);
}

static void adv_register(fm_ble *b);

static int on_adv_registered(sd_bus_message *m, void *arg, sd_bus_error *err)
{
    fm_ble *b = arg;
    b->adv_busy = false;
    const sd_bus_error *e = sd_bus_message_get_error(m);
    if (e) {
        blog(b, FM_LOG_WARN, "ble: RegisterAdvertisement: %s: %s", e->name, e->message);
        return 0;
    }
    b->adv_registered = true;
    blog(b, FM_LOG_INFO, "ble: advertising %s", b->local);
    if (b->adv_dirty) {
        struct timeval tv = {FM_BLE_ADV_INTERVAL_MS / 1000, 0};
        evtimer_add(b->adv_timer, &tv);
    }
    return 0;
}

static int on_adv_unregistered(sd_bus_message *m, void *arg, sd_bus_error *err)
{
    fm_ble *b = arg;
    b->adv_busy = false;
    b->adv_registered = false;
    adv_register(b);
    return 0;
}

/* Registers the advertisement, or swaps it for one with the current payload: bluetoothd reads
 * its properties once, at registration. */
static void adv_register(fm_ble *b)
{
    if (b->adv_busy || b->dead)
        return;
    int r;
    b->adv_dirty = false;
    if (b->adv_registered) {
        r = sd_bus_call_method_async(b->bus, NULL, "org.bluez", b->adapter_path,
                                     "org.bluez.LEAdvertisingManager1", "UnregisterAdvertisement",
                                     on_adv_unregistered, b, "o", ADV_PATH);
    } else {
        make_payload(b, b->adv_payload);
        r = sd_bus_call_method_async(b->bus, NULL, "org.bluez", b->adapter_path,
                                     "org.bluez.LEAdvertisingManager1", "RegisterAdvertisement",
                                     on_adv_registered, b, "oa{sv}", ADV_PATH, 0);
    }
    if (r < 0)
        blog(b, FM_LOG_WARN, "ble: advertisement call: %s", strerror(-r));
    else
        b->adv_busy = true;
}

static void on_adv_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    fm_ble *b = arg;
    if (b->adv_dirty)
        adv_register(b);
    bus_pump(b);
}

/* Advertise again soon (the same payload; a swap that is due anyway covers it): a link of ours
 * came up, and with it the controller stopped advertising; or we found a peer, which may have
 * missed our advertisement (one switched on while the peer's discovery was still starting is
 * never reported to it by btvirt, nor by a duplicate-filtering scan). Before the first
 * registration there is nothing to swap: that one comes once discovery is on. */
static void adv_refresh(fm_ble *b)
{
    if (b->adv_dirty || b->bluez_gone || b->dead || (!b->adv_registered && !b->adv_busy))
        return;
    b->adv_dirty = true;
    if (!b->adv_busy) { /* else on_adv_registered sees adv_dirty and arms the timer */
        struct timeval tv = {0, FM_BLE_ADV_REFRESH_MS * 1000};
        evtimer_add(b->adv_timer, &tv);
    }
}

/* ---- discovery ------------------------------------------------------------------------------ */

static void restart_later(fm_ble *b);

static int on_discovery(sd_bus_message *m, void *arg, sd_bus_error *err)
{
    fm_ble *b = arg;
    const sd_bus_error *e = sd_bus_message_get_error(m);
    if (e && b->restart_tries > 0 && b->restart_tries < FM_BLE_RESTART_TRIES) {
        restart_later(b); /* the new bluetoothd has not set the adapter up yet */
        return 0;
    }
    if (e)
        blog(b, FM_LOG_WARN, "ble: StartDiscovery: %s: %s", e->name, e->message);
    else if (!b->discovering)
        blog(b, b->restart_tries ? FM_LOG_INFO : FM_LOG_DEBUG, "ble: discovering on %s",
             b->adapter_path);
    b->discovering = !e;
    b->restart_tries = 0;
    if (!b->adv_registered && !b->adv_busy) {
        /* The first advertisement after scanning is on (see the file comment), and a moment
         * after: peers (re)starting with us, as after a bluetoothd restart, are scanning by then
         * and see it (see adv_refresh). */
        b->adv_dirty = true;
        struct timeval tv = {FM_BLE_ADV_AFTER_SCAN_MS / 1000,
                             (FM_BLE_ADV_AFTER_SCAN_MS % 1000) * 1000};
        evtimer_add(b->adv_timer, &tv);
    } else if (b->adv_dirty && !b->adv_busy) {
        adv_register(b);
    }
    return 0;
}

static int on_filter(sd_bus_message *m, void *arg, sd_bus_error *err)
{
    fm_ble *b = arg;
    const sd_bus_error *e = sd_bus_message_get_error(m);
    if (e && !b->restart_tries)
        blog(b, FM_LOG_WARN, "ble: SetDiscoveryFilter: %s: %s", e->name, e->message);
    int r = sd_bus_call_method_async(b->bus, NULL, "org.bluez", b->adapter_path,
                                     "org.bluez.Adapter1", "StartDiscovery", on_discovery, b, "");
    if (r < 0)
        blog(b, FM_LOG_WARN, "ble: StartDiscovery: %s", strerror(-r));
    return 0;
}

static int start_discovery(fm_ble *b)
{
    return sd_bus_call_method_async(b->bus, NULL, "org.bluez", b->adapter_path,
                                    "org.bluez.Adapter1", "SetDiscoveryFilter", on_filter, b,
                                    "a{sv}", 2, "Transport", "s", "le", "DuplicateData", "b", 0);
}

static int on_rescan_stopped(sd_bus_message *m, void *arg, sd_bus_error *err)
{
    (void)m, (void)err;
    fm_ble *b = arg;
    b->rescan_busy = false;
    if (b->bluez_gone || b->dead)
        return 0;
    int r = start_discovery(b); /* whether or not the stop worked */
    if (r < 0)
        blog(b, FM_LOG_WARN, "ble: SetDiscoveryFilter: %s", strerror(-r));
    return 0;
}

/* After a dial (from the loop, never inside a bus callback): discovery off and on again, so that
 * the peer is reported anew and the kernel's pending connect goes ahead. While discovery is not
 * on yet, or being restarted, its own start does that. */
static void on_rescan_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    fm_ble *b = arg;
    if (b->bluez_gone || b->dead || b->rescan_busy || !b->discovering || b->restart_tries)
        return;
    int r =
        sd_bus_call_method_async(b->bus, NULL, "org.bluez", b->adapter_path, "org.bluez.Adapter1",
                                 "StopDiscovery", on_rescan_stopped, b, "");
    if (r < 0) {
        blog(b, FM_LOG_WARN, "ble: StopDiscovery: %s", strerror(-r));
        return;
    }
    b->rescan_busy = true;
    bus_pump(b);
}

/* ---- bluetoothd restarts -------------------------------------------------------------------- */

static void on_restart_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    fm_ble *b = arg;
    if (b->bluez_gone || b->dead)
        return;
    b->restart_tries++;
    int r = start_discovery(b);
    if (r < 0)
        blog(b, FM_LOG_WARN, "ble: SetDiscoveryFilter: %s", strerror(-r));
    bus_pump(b);
}

static void restart_later(fm_ble *b)
{
    struct timeval tv = {0, FM_BLE_RESTART_MS * 1000};
    evtimer_add(b->restart_timer, &tv);
}

/* NameOwnerChanged for org.bluez. Gone: its devices, discovery and our advertisement went with
 * it (open channels are the kernel's and carry on). Back: discovery and the advertisement are
 * set up again once its adapter answers (retried every FM_BLE_RESTART_MS). */
static int on_owner(sd_bus_message *m, void *arg, sd_bus_error *err)
{
    (void)err;
    fm_ble *b = arg;
    const char *name, *old, *owner;
    if (sd_bus_message_read(m, "sss", &name, &old, &owner) < 0 || strcmp(name, "org.bluez") != 0)
        return 0;
    if (!owner[0]) {
        if (!b->bluez_gone)
            blog(b, FM_LOG_WARN, "ble: bluetoothd went away; discovery resumes when it is back");
        b->bluez_gone = true;
        b->adv_registered = b->adv_busy = b->discovering = b->rescan_busy = false;
        b->restart_tries = 0;
        evtimer_del(b->restart_timer);
        for (size_t i = 0; i < FM_BLE_MAX_DEVICES; i++)
            if (b->devs[i].used) {
                dev_unreport(b, &b->devs[i]);
                memset(&b->devs[i], 0, sizeof b->devs[i]);
            }
        return 0;
    }
    if (b->bluez_gone)
        blog(b, FM_LOG_INFO, "ble: bluetoothd is back; restarting discovery and advertising");
    else
        blog(b, FM_LOG_INFO, "ble: bluetoothd restarted; restarting discovery and advertising");
    b->bluez_gone = false;
    b->adv_registered = b->adv_busy = b->discovering = b->rescan_busy = false;
    b->restart_tries = 1;
    restart_later(b);
    return 0;
}

/* ---- the adapter ---------------------------------------------------------------------------- */

/* Adapter1 properties: its address and type. */
static int read_adapter(fm_ble *b, sd_bus_message *m)
{
    int r = sd_bus_message_enter_container(m, 'a', "{sv}");
    if (r <= 0)
        return r;
    while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
        const char *key, *s;
        if ((r = sd_bus_message_read(m, "s", &key)) < 0)
            return r;
        if ((!strcmp(key, "Address") || !strcmp(key, "AddressType")) &&
            sd_bus_message_enter_container(m, 'v', "s") > 0) {
            if ((r = sd_bus_message_read(m, "s", &s)) < 0)
                return r;
            if (!strcmp(key, "Address"))
                mac_parse(s, ':', b->mac);
            else
                b->random = !strcmp(s, "random");
            sd_bus_message_exit_container(m);
        } else if ((r = sd_bus_message_skip(m, "v")) < 0) {
            return r;
        }
        sd_bus_message_exit_container(m);
    }
    sd_bus_message_exit_container(m);
    return 0;
}

/* GetManagedObjects: picks the adapter (the named one, else the first), then reads the devices
 * bluetoothd already knows under it. */
static int find_adapter(fm_ble *b, const char *want)
{
    sd_bus_error err = SD_BUS_ERROR_NULL;
    sd_bus_message *reply = NULL;
    int r = sd_bus_call_method(b->bus, "org.bluez", "/", "org.freedesktop.DBus.ObjectManager",
                               "GetManagedObjects", &err, &reply, "");
    if (r < 0) {
        blog(b, FM_LOG_WARN, "ble: bluetoothd not reachable (%s); BLE off",
             err.message ? err.message : strerror(-r));
        sd_bus_error_free(&err);
        return FM_EIO;
    }
    for (int pass = 0; pass < 2 && r >= 0; pass++) {
        sd_bus_message_rewind(reply, 1);
        if ((r = sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}")) <= 0)
            break;
        while ((r = sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}")) > 0) {
            const char *path;
            if ((r = sd_bus_message_read(reply, "o", &path)) < 0)
                break;
            if (pass == 1) {
                r = b->adapter_path[0] ? read_interfaces(b, path, reply)
                                       : sd_bus_message_skip(reply, "a{sa{sv}}");
            } else {
                const char *name = strrchr(path, '/');
                bool candidate = !b->adapter_path[0] && name &&
                                 strncmp(path, "/org/bluez/", 11) == 0 && !strchr(path + 11, '/') &&
                                 (!want || !want[0] || !strcmp(name + 1, want));
                if ((r = sd_bus_message_enter_container(reply, 'a', "{sa{sv}}")) <= 0)
                    break;
                while ((r = sd_bus_message_enter_container(reply, 'e', "sa{sv}")) > 0) {
                    const char *iface;
                    if ((r = sd_bus_message_read(reply, "s", &iface)) < 0)
                        break;
                    if (candidate && !strcmp(iface, "org.bluez.Adapter1")) {
                        snprintf(b->adapter_path, sizeof b->adapter_path, "%s", path);
                        r = read_adapter(b, reply);
                    } else {
                        r = sd_bus_message_skip(reply, "a{sv}");
                    }
                    if (r < 0)
                        break;
                    sd_bus_message_exit_container(reply);
                }
                sd_bus_message_exit_container(reply);
            }
            sd_bus_message_exit_container(reply);
        }
        sd_bus_message_exit_container(reply);
        if (!b->adapter_path[0])
            break;
    }
    sd_bus_message_unref(reply);
    if (r < 0) {
        blog(b, FM_LOG_WARN, "ble: bad GetManagedObjects reply: %s; BLE off", strerror(-r));
        return FM_EIO;
    }
    if (!b->adapter_path[0]) {
        blog(b, FM_LOG_WARN, "ble: no Bluetooth adapter%s%s; BLE off", want && want[0] ? " " : "",
             want ? want : "");
        return FM_ENOTFOUND;
    }
    return 0;
}

/* ---- L2CAP sockets -------------------------------------------------------------------------- */

static int le_socket(const fm_ble *b, uint16_t psm)
{
    int fd = socket(AF_BLUETOOTH, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, BTPROTO_L2CAP);
    if (fd < 0)
        return -1;
    struct sockaddr_l2 a = {.l2_family = AF_BLUETOOTH,
                            .l2_psm = htobs(psm),
                            .l2_bdaddr_type = b->random ? BDADDR_LE_RANDOM : BDADDR_LE_PUBLIC};
    to_bdaddr(b->mac, &a.l2_bdaddr);
    uint16_t mtu = FM_BLE_RCVMTU;
    setsockopt(fd, SOL_BLUETOOTH, BT_RCVMTU, &mtu, sizeof mtu); /* best effort */
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static void on_listen(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    fm_ble *b = arg;
    for (int i = 0; i < 8; i++) {
        struct sockaddr_l2 peer;
        socklen_t pl = sizeof peer;
        memset(&peer, 0, sizeof peer);
        int c = accept4(fd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                blog(b, FM_LOG_WARN, "ble: accept: %s", strerror(errno));
            return;
        }
        uint8_t mac[6];
        for (int k = 0; k < 6; k++)
            mac[k] = peer.l2_bdaddr.b[5 - k];
        bool random = peer.l2_bdaddr_type == BDADDR_LE_RANDOM;
        char addr[FM_NODE_MAX_ADDR + 1] = "";
        for (size_t k = 0; k < FM_BLE_MAX_DEVICES; k++) {
            const ble_dev *d = &b->devs[k];
            if (d->used && d->reported[0] && !memcmp(d->mac, mac, 6))
                snprintf(addr, sizeof addr, "%s", d->reported);
        }
        if (!addr[0])
            addr_format(addr, sizeof addr, mac, random, 0);
        drop_connects(b, mac, addr);
        sock_note(b, false, mac, c);
        b->cb.accepted(b->cb.ctx, c, addr);
    }
}

static int start_listener(fm_ble *b)
{
    for (unsigned psm = FM_BLE_PSM_MIN; psm <= FM_BLE_PSM_MAX; psm++) {
        int fd = le_socket(b, (uint16_t)psm);
        if (fd < 0) {
            if (errno == EADDRINUSE)
                continue;
            blog(b, FM_LOG_WARN, "ble: L2CAP socket: %s; BLE off", strerror(errno));
            return FM_EIO;
        }
        if (listen(fd, 4) != 0) {
            blog(b, FM_LOG_WARN, "ble: L2CAP listen: %s; BLE off", strerror(errno));
            close(fd);
            return FM_EIO;
        }
        b->listen_fd = fd;
        b->psm = (uint16_t)psm;
        b->listen_ev = event_new(b->base, fd, EV_READ | EV_PERSIST, on_listen, b);
        if (!b->listen_ev || event_add(b->listen_ev, NULL))
            return FM_ENOMEM;
        return 0;
    }
    blog(b, FM_LOG_WARN, "ble: every LE dynamic PSM is taken; BLE off");
    return FM_ELIMIT;
}

int fm_ble_connect(fm_ble *b, const char *addr, int *out)
{
    uint8_t mac[6];
    bool random;
    uint16_t psm;
    if (fm_ble_parse_addr(addr, mac, &random, &psm) || psm < FM_BLE_PSM_MIN || psm > FM_BLE_PSM_MAX)
        return FM_EINVAL;
    if (inbound_up(b, mac)) {
        blog(b, FM_LOG_DEBUG, "ble: connect %s: it has a channel open to us", addr);
        return FM_EEXISTS;
    }
    int fd = le_socket(b, 0);
    if (fd < 0)
        return FM_EIO;
    struct sockaddr_l2 a = {.l2_family = AF_BLUETOOTH,
                            .l2_psm = htobs(psm),
                            .l2_bdaddr_type = random ? BDADDR_LE_RANDOM : BDADDR_LE_PUBLIC};
    to_bdaddr(mac, &a.l2_bdaddr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS &&
        errno != EAGAIN) {
        blog(b, FM_LOG_DEBUG, "ble: connect %s: %s", addr, strerror(errno));
        close(fd);
        return FM_EIO;
    }
    sock_note(b, true, mac, fd);
    bool linked = false;
    for (size_t i = 0; i < FM_BLE_MAX_DEVICES; i++)
        linked |= b->devs[i].used && b->devs[i].connected && !memcmp(b->devs[i].mac, mac, 6);
    if (!linked) { /* a channel on a link that is up needs no advertising report */
        struct timeval now = {0, 0};
        evtimer_add(b->rescan_timer, &now);
    }
    *out = fd;
    return 0;
}

bool fm_ble_dial_later(const fm_ble *b, const char *addr)
{
    uint8_t mac[6];
    bool random;
    uint16_t psm;
    if (!b || fm_ble_parse_addr(addr, mac, &random, &psm) || inbound_up(b, mac))
        return false; /* nothing to wait for (fm_ble_connect refuses the second case) */
    bool lower = memcmp(b->mac, mac, 6) < 0;
    for (size_t i = 0; i < FM_BLE_MAX_DEVICES; i++) {
        const ble_dev *d = &b->devs[i];
        if (d->used && !memcmp(d->mac, mac, 6)) {
            if (!d->connected)
                return lower; /* the higher address dials at once */
            /* A link just up may be the peer's, its channel on the way. */
            return mono_ms() < d->up_ms + FM_BLE_DIAL_SETTLE_MS;
        }
    }
    return lower;
}

int fm_ble_connect_result(int fd, int *why)
{
    int e = 0;
    socklen_t l = sizeof e;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) != 0)
        e = errno;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    if (!e && poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)))
        e = ECONNABORTED; /* shut down before it was up (drop_connects) */
    if (why)
        *why = e;
    return e ? FM_EIO : 0;
}

/* ---- open and close ------------------------------------------------------------------------- */

static int ble_setup(fm_ble *b, const char *adapter)
{
    int r = sd_bus_open_system(&b->bus);
    if (r < 0) {
        blog(b, FM_LOG_WARN, "ble: no system D-Bus (%s); BLE off", strerror(-r));
        return FM_EIO;
    }
    sd_bus_set_method_call_timeout(b->bus, (uint64_t)FM_BLE_CALL_TIMEOUT_MS * 1000u);
    b->bus_timer = evtimer_new(b->base, on_bus, b);
    b->adv_timer = evtimer_new(b->base, on_adv_timer, b);
    b->restart_timer = evtimer_new(b->base, on_restart_timer, b);
    b->rescan_timer = evtimer_new(b->base, on_rescan_timer, b);
    if (!b->bus_timer || !b->adv_timer || !b->restart_timer || !b->rescan_timer)
        return FM_ENOMEM;
    /* Matches before the snapshot, so no device slips between the two. */
    if (sd_bus_match_signal(b->bus, &b->match_added, "org.bluez", NULL,
                            "org.freedesktop.DBus.ObjectManager", "InterfacesAdded", on_added,
                            b) < 0 ||
        sd_bus_match_signal(b->bus, &b->match_removed, "org.bluez", NULL,
                            "org.freedesktop.DBus.ObjectManager", "InterfacesRemoved", on_removed,
                            b) < 0 ||
        sd_bus_add_match(b->bus, &b->match_changed,
                         "type='signal',sender='org.bluez',interface='org.freedesktop.DBus."
                         "Properties',member='PropertiesChanged',arg0='org.bluez.Device1'",
                         on_changed, b) < 0 ||
        sd_bus_add_match(b->bus, &b->match_owner,
                         "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                         "interface='org.freedesktop.DBus',member='NameOwnerChanged',"
                         "arg0='org.bluez'",
                         on_owner, b) < 0)
        return FM_EIO;
    int rc = find_adapter(b, adapter);
    if (rc)
        return rc;
    if ((rc = start_listener(b)))
        return rc;
    addr_format(b->local, sizeof b->local, b->mac, b->random, b->psm);
    if (sd_bus_add_object_vtable(b->bus, &b->obj_slot, ADV_PATH, "org.bluez.LEAdvertisement1",
                                 adv_vtable, b) < 0 ||
        sd_bus_add_object_manager(b->bus, &b->om_slot, "/org/fieldmesh/ble") < 0)
        return FM_EIO;
    if ((r = start_discovery(b)) < 0) {
        blog(b, FM_LOG_WARN, "ble: SetDiscoveryFilter: %s; BLE off", strerror(-r));
        return FM_EIO;
    }
    return 0;
}

static void on_start(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    fm_ble *b = arg;
    for (size_t i = 0; i < FM_BLE_MAX_DEVICES; i++)
        if (b->devs[i].used && b->devs[i].has_payload)
            dev_report(b, &b->devs[i]);
}

int fm_ble_open(struct event_base *base, const char *adapter, const uint8_t mesh_id[FM_ID_BYTES],
                const uint8_t digest[FM_HASH_BYTES], const fm_ble_cb *cb, fm_ble **out)
{
    if (!base || !cb || !cb->found || !cb->lost || !cb->accepted || !out)
        return FM_EINVAL;
    fm_ble *b = calloc(1, sizeof *b);
    if (!b)
        return FM_ENOMEM;
    b->base = base;
    b->cb = *cb;
    b->listen_fd = -1;
    memcpy(b->mesh, mesh_id, FM_BLE_MESH_PREFIX);
    memcpy(b->digest, digest, FM_HASH_BYTES);
    b->quiet = true;
    int rc = ble_setup(b, adapter);
    b->quiet = false;
    struct timeval now = {0, 0};
    if (!rc && (!(b->start_ev = evtimer_new(base, on_start, b)) || evtimer_add(b->start_ev, &now)))
        rc = FM_ENOMEM;
    if (rc) {
        fm_ble_close(b);
        return rc;
    }
    blog(b, FM_LOG_INFO, "ble: adapter %s, listening on %s", b->adapter_path, b->local);
    bus_pump(b);
    *out = b;
    return 0;
}

void fm_ble_set_digest(fm_ble *b, const uint8_t digest[FM_HASH_BYTES])
{
    if (!b || memcmp(b->digest, digest, FM_HASH_BYTES) == 0)
        return;
    memcpy(b->digest, digest, FM_HASH_BYTES);
    /* Peers compare against our new digest now. */
    for (size_t i = 0; i < FM_BLE_MAX_DEVICES; i++)
        if (b->devs[i].used && b->devs[i].reported[0])
            dev_report(b, &b->devs[i]);
    if (memcmp(b->adv_payload + 2 + FM_BLE_MESH_PREFIX, digest, FM_BLE_DIGEST_PREFIX) == 0)
        return;
    if (!b->adv_dirty) {
        b->adv_dirty = true;
        /* Swapping advertisements costs the peers a scan: coalesce. Before discovery is on,
         * the first registration reads the new digest; one under way is swapped once done. */
        struct timeval tv = {b->adv_registered ? FM_BLE_ADV_INTERVAL_MS / 1000 : 0, 0};
        if (b->adv_registered || (!b->adv_busy && b->discovering))
            evtimer_add(b->adv_timer, &tv);
    }
}

const char *fm_ble_local_addr(const fm_ble *b)
{
    return b->local;
}

void fm_ble_close(fm_ble *b)
{
    if (!b)
        return;
    if (b->bus && !b->dead && !b->bluez_gone && b->adapter_path[0]) {
        /* Best effort, bounded: bluetoothd also drops both when our bus connection closes. */
        if (b->adv_registered)
            sd_bus_call_method(b->bus, "org.bluez", b->adapter_path,
                               "org.bluez.LEAdvertisingManager1", "UnregisterAdvertisement", NULL,
                               NULL, "o", ADV_PATH);
        sd_bus_call_method(b->bus, "org.bluez", b->adapter_path, "org.bluez.Adapter1",
                           "StopDiscovery", NULL, NULL, "");
    }
    sd_bus_slot *slots[] = {b->obj_slot,      b->om_slot,       b->match_added,
                            b->match_removed, b->match_changed, b->match_owner};
    for (size_t i = 0; i < FM_ARRAY_LEN(slots); i++)
        sd_bus_slot_unref(slots[i]);
    struct event *evs[] = {b->bus_ev,   b->bus_timer,     b->listen_ev,   b->adv_timer,
                           b->start_ev, b->restart_timer, b->rescan_timer};
    for (size_t i = 0; i < FM_ARRAY_LEN(evs); i++)
        if (evs[i])
            event_free(evs[i]);
    if (b->listen_fd >= 0)
        close(b->listen_fd);
    if (b->bus)
        sd_bus_flush_close_unref(b->bus);
    free(b);
}
