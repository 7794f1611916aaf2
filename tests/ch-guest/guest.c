/*
 * The Nexus test guest: a freestanding x86-64 program that speaks just enough of the channel
 * to prove a VMM's shared-memory path, without a kernel. See README.md.
 *
 *   find 1af4:1110 on PCI bus 0 (ports 0xCF8/0xCFC) -> map its BAR2 -> check the region header
 *   loop, polling (no vsock driver; naps on the x2APIC timer between polls):
 *     new host epoch   re-attach to the rings, Ping on the calls ring, acknowledge the epoch
 *     invocation       event {"bucket": B, "key": K, "pings": N, "prefer_staged": bool,
 *                      "hash": bool}: Get B/K whole with calls (unless prefer_staged and the
 *                      host staged it), hash B/K in place if staged, make N more Pings; answer
 *                      {"epoch", "get": {...} | null, "staged": {...} | null, "pings"}. With
 *                      "hash": false the bytes are not read (sizes only; see README.md)
 *
 * Everything it prints goes to COM1, lines starting "nexus-test-guest: ". The region layout
 * comes from nexus_layout.h, generated from the channel crate when the guest is built.
 * Built with -mgeneral-regs-only: no SSE, which this machine's KVM cannot run here.
 */

#include "nexus_layout.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long usize;

#define COM1 0x3F8
#define PCI_ADDRESS 0xCF8
#define PCI_DATA 0xCFC
#define IVSHMEM_ID 0x11101AF4u /* device 0x1110, vendor 0x1af4 */
#define PCI_COMMAND_MEMORY 0x2
#define PAGE_HUGE_PRESENT_RW 0x83ull
#define PAGE_PRESENT_RW 0x3ull
#define HUGE_PAGE (2ull << 20)
#define MAX_NAME 256

/* ---- port I/O and the console ---- */

static inline void outb(u16 port, u8 value) { __asm__ volatile("outb %0, %1" ::"a"(value), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(u16 port, u32 value) { __asm__ volatile("outl %0, %1" ::"a"(value), "Nd"(port)); }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static void putc_(char c) {
    while (!(inb(COM1 + 5) & 0x20)) {}
    outb(COM1, (u8)c);
}

static void puts_(const char *s) {
    while (*s) putc_(*s++);
}

static void putu(u64 v, unsigned base) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    while (n) putc_(digits[--n]);
}

static void say(const char *s) { puts_("nexus-test-guest: "); puts_(s); }

static void halt(const char *why) {
    say("halted: "); puts_(why); puts_("\n");
    for (;;) __asm__ volatile("cli; hlt");
}

/* ---- waiting: short naps on the x2APIC timer, so that a waiting guest leaves its CPU to the
 * host (it has no doorbell to sleep on); a spin where there is no x2APIC ---- */

#define MSR_APIC_BASE 0x1Bu
#define APIC_BASE_ENABLE (1u << 11)
#define APIC_BASE_X2APIC (1u << 10)
#define X2APIC_EOI 0x80Bu
#define X2APIC_SPURIOUS 0x80Fu
#define X2APIC_LVT_TIMER 0x832u
#define X2APIC_TIMER_INITIAL 0x838u
#define X2APIC_TIMER_DIVIDE 0x83Eu
#define NAP_VECTOR 0x40u
/* A one-shot count at divide-by-1: 1 ms on KVM's 1 GHz APIC timer (shorter naps cost the host
 * as much as a spin: each is a few exits). */
#define NAP_TICKS 1000000u
/* How many times a call polls for its answer before it naps: a Ping's answer comes within
 * microseconds, a storage read's after milliseconds. */
#define CALL_SPINS 20000u
#define KERNEL_CODE 0x08 /* entry.S's 64-bit code segment */

static int can_nap;

struct idt_gate { u16 offset_low, selector; u8 ist, type; u16 offset_mid; u32 offset_high, zero; }
    __attribute__((packed));
static struct idt_gate idt[256] __attribute__((aligned(16)));

/* Every external vector (32-255): acknowledge, return. Exceptions keep no handler. */
void nap_interrupt(void);
__asm__(".text\n.globl nap_interrupt\nnap_interrupt:\n"
        "  push %rax\n  push %rcx\n  push %rdx\n"
        "  mov $0x80B, %ecx\n  xor %eax, %eax\n  xor %edx, %edx\n  wrmsr\n"
        "  pop %rdx\n  pop %rcx\n  pop %rax\n  iretq\n");

static u64 rdmsr(u32 msr) {
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}

static void wrmsr(u32 msr, u64 value) {
    __asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)value), "d"((u32)(value >> 32)));
}

static void setup_naps(void) {
    u32 eax = 1, ebx, ecx = 0, edx;
    __asm__ volatile("cpuid" : "+a"(eax), "=b"(ebx), "+c"(ecx), "=d"(edx));
    if (!(ecx & (1u << 21))) { say("no x2APIC: waiting by spinning\n"); return; }
    u64 handler = (u64)(usize)nap_interrupt;
    for (unsigned v = 32; v < 256; v++) {
        idt[v] = (struct idt_gate){ (u16)handler, KERNEL_CODE, 0, 0x8E /* present interrupt gate */,
                                    (u16)(handler >> 16), (u32)(handler >> 32), 0 };
    }
    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { sizeof idt - 1, (u64)(usize)idt };
    __asm__ volatile("lidt %0" ::"m"(idtr));
    wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | APIC_BASE_ENABLE | APIC_BASE_X2APIC);
    wrmsr(X2APIC_SPURIOUS, 0x100 | 0xFF);
    wrmsr(X2APIC_TIMER_DIVIDE, 0xB);
    wrmsr(X2APIC_LVT_TIMER, NAP_VECTOR); /* one-shot, unmasked */
    can_nap = 1;
    say("waits nap on the x2APIC timer\n");
}

/* One short wait: halted until the timer's interrupt (sti; hlt wakes on one that is already
 * pending), interrupts off again after it. */
static void nap(void) {
    if (!can_nap) { __asm__ volatile("pause"); return; }
    wrmsr(X2APIC_TIMER_INITIAL, NAP_TICKS);
    __asm__ volatile("sti; hlt; cli" ::: "memory");
}

/* gcc may emit calls to these even in freestanding code. */
void *memset(void *d, int c, usize n) {
    volatile u8 *p = d;
    while (n--) *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, usize n) {
    volatile u8 *p = d;
    const volatile u8 *q = s;
    while (n--) *p++ = *q++;
    return d;
}

/* ---- paging: identity-map the BAR with 2 MiB pages into entry.S's tables ---- */

extern u64 boot_pml4[512];
static u64 table_pool[8][512] __attribute__((aligned(4096)));
static unsigned tables_used;

static u64 *next_table(u64 *entry) {
    if (!(*entry & 1)) {
        if (tables_used == 8) halt("out of page tables");
        u64 *table = table_pool[tables_used++];
        memset(table, 0, 4096);
        *entry = (u64)(usize)table | PAGE_PRESENT_RW;
    }
    return (u64 *)(usize)(*entry & ~0xFFFull);
}

static void map_identity(u64 start, u64 size) {
    for (u64 page = start & ~(HUGE_PAGE - 1); page < start + size; page += HUGE_PAGE) {
        u64 *pdpt = next_table(&boot_pml4[(page >> 39) & 511]);
        u64 *pd = next_table(&pdpt[(page >> 30) & 511]);
        pd[(page >> 21) & 511] = page | PAGE_HUGE_PRESENT_RW;
    }
    u64 cr3;
    __asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3)::"memory");
}

/* ---- PCI ---- */

static u32 pci_read(u32 dev, u32 offset) {
    outl(PCI_ADDRESS, 0x80000000u | (dev << 11) | offset);
    return inl(PCI_DATA);
}

static void pci_write(u32 dev, u32 offset, u32 value) {
    outl(PCI_ADDRESS, 0x80000000u | (dev << 11) | offset);
    outl(PCI_DATA, value);
}

/* The BAR2 address and size of the first ivshmem device on bus 0, or 0. */
static u64 find_region(u64 *size) {
    for (u32 dev = 0; dev < 32; dev++) {
        if (pci_read(dev, 0) != IVSHMEM_ID) continue;
        u32 low = pci_read(dev, 0x18), high = pci_read(dev, 0x1C);
        int wide = (low & 0x6) == 0x4;
        /* Size the BAR: write all ones, read the mask back, restore. */
        pci_write(dev, 0x18, 0xFFFFFFFFu);
        u32 mask_low = pci_read(dev, 0x18);
        pci_write(dev, 0x18, low);
        u64 mask = (u64)(mask_low & ~0xFu) | (wide ? 0xFFFFFFFF00000000ull : 0);
        if (wide) {
            pci_write(dev, 0x1C, 0xFFFFFFFFu);
            mask = (mask & 0xFFFFFFFFull) | ((u64)pci_read(dev, 0x1C) << 32);
            pci_write(dev, 0x1C, high);
        }
        *size = ~mask + 1;
        pci_write(dev, 0x04, pci_read(dev, 0x04) | PCI_COMMAND_MEMORY);
        say("ivshmem at 00:"); putu(dev, 16); puts_(".0, BAR2 0x");
        u64 bar = ((u64)(wide ? high : 0) << 32) | (low & ~0xFu);
        putu(bar, 16); puts_(", "); putu(*size >> 10, 10); puts_(" KiB\n");
        return bar;
    }
    return 0;
}

/* ---- the region ---- */

static volatile u8 *region;
static u64 region_size;
static struct {
    u32 ring_capacity, buffer_size, buffer_count, guest_buffers;
    u64 data_offset, staging_offset, staging_size;
} geo;
/* This side's own ring indices, kept privately (the protocol never reads them back). */
static u32 calls_tail, completions_head, invocations_head, results_tail;
static u64 next_tag = 1;

static u64 load64(u64 at) { return __atomic_load_n((volatile u64 *)(region + at), __ATOMIC_ACQUIRE); }
static u32 load32(u64 at) { return __atomic_load_n((volatile u32 *)(region + at), __ATOMIC_ACQUIRE); }
static void store64(u64 at, u64 v) { __atomic_store_n((volatile u64 *)(region + at), v, __ATOMIC_RELEASE); }
static void store32(u64 at, u32 v) { __atomic_store_n((volatile u32 *)(region + at), v, __ATOMIC_RELEASE); }
static void store16(u64 at, u16 v) { *(volatile u16 *)(region + at) = v; }

static u64 ring_base(u32 ring) { return NX_RING_OFFSET(geo.ring_capacity, ring); }
static u64 ring_slot(u32 ring, u32 index) {
    return ring_base(ring) + NX_RING_SLOTS + (u64)(index & (geo.ring_capacity - 1)) * NX_DESC_SIZE;
}
static u64 buffer_at(u32 index) { return geo.data_offset + (u64)index * geo.buffer_size; }

/* Reads and checks the geometry the host published; 0 when it is not a region of ours. */
static int read_header(void) {
    if (load64(NX_GEO_MAGIC) != NX_MAGIC || load32(NX_GEO_VERSION) != NX_VERSION) return 0;
    geo.ring_capacity = load32(NX_GEO_RING_CAPACITY);
    geo.buffer_size = load32(NX_GEO_BUFFER_SIZE);
    geo.buffer_count = load32(NX_GEO_BUFFER_COUNT);
    geo.guest_buffers = load32(NX_GEO_GUEST_BUFFERS);
    geo.data_offset = load64(NX_GEO_DATA_OFFSET);
    geo.staging_offset = load64(NX_GEO_STAGING_OFFSET);
    geo.staging_size = load64(NX_GEO_STAGING_SIZE);
    u64 size = load64(NX_GEO_REGION_SIZE);
    int sane = size <= region_size && geo.ring_capacity && !(geo.ring_capacity & (geo.ring_capacity - 1))
        && geo.guest_buffers > 0 && geo.guest_buffers < geo.buffer_count
        && buffer_at(geo.buffer_count) <= geo.staging_offset
        && geo.staging_offset + geo.staging_size == size;
    if (!sane) halt("the region header describes an impossible geometry");
    return 1;
}

/* Continues from the indices the host published (it resets them when it opens an epoch). */
static void attach(void) {
    calls_tail = load32(ring_base(NX_RING_CALLS) + NX_RING_PRODUCER);
    completions_head = load32(ring_base(NX_RING_COMPLETIONS) + NX_RING_CONSUMER);
    invocations_head = load32(ring_base(NX_RING_INVOCATIONS) + NX_RING_CONSUMER);
    results_tail = load32(ring_base(NX_RING_RESULTS) + NX_RING_PRODUCER);
}

struct reply {
    u32 status, flags, meta_len;
    u64 body_len, stream;
};

static u64 host_epoch(void) { return load64(NX_EPOCH); }

/* One call in guest buffer 0, whose request bytes are already there; polls for the answer.
 * Returns 0 if the host left (or opened a new epoch) before answering. */
static int call(u16 op, u16 bucket_len, u16 key_len, u64 stream, struct reply *reply) {
    u64 epoch = host_epoch();
    u64 slot = ring_slot(NX_RING_CALLS, calls_tail);
    for (u64 i = 0; i < NX_DESC_SIZE; i += 8) store64(slot + i, 0);
    u64 tag = next_tag++;
    store64(slot + NX_CALL_TAG, tag);
    store16(slot + NX_CALL_OP, op);
    store32(slot + NX_CALL_BUFFER, 0);
    store16(slot + NX_CALL_BUCKET_LEN, bucket_len);
    store16(slot + NX_CALL_KEY_LEN, key_len);
    store64(slot + NX_CALL_STREAM, stream);
    store32(ring_base(NX_RING_CALLS) + NX_RING_PRODUCER, ++calls_tail);
    u64 completions = ring_base(NX_RING_COMPLETIONS) + NX_RING_PRODUCER;
    for (u64 polls = 0; load32(completions) == completions_head; polls++) {
        if (load32(NX_HOST_STATE) != NX_HOST_READY || host_epoch() != epoch) return 0;
        if (polls < CALL_SPINS) __asm__ volatile("pause"); else nap();
    }
    u64 done = ring_slot(NX_RING_COMPLETIONS, completions_head);
    if (load64(done + NX_COMPLETION_TAG) != tag) halt("a completion for another call");
    reply->status = *(volatile u16 *)(region + done + NX_COMPLETION_STATUS);
    reply->flags = *(volatile u16 *)(region + done + NX_COMPLETION_FLAGS);
    reply->meta_len = load32(done + NX_COMPLETION_META_LEN);
    reply->body_len = load64(done + NX_COMPLETION_BODY_LEN);
    reply->stream = load64(done + NX_COMPLETION_STREAM);
    store32(ring_base(NX_RING_COMPLETIONS) + NX_RING_CONSUMER, ++completions_head);
    if ((u64)reply->meta_len + reply->body_len > geo.buffer_size) halt("a reply larger than its buffer");
    return 1;
}

static int ping(void) {
    struct reply reply;
    return call(NX_OP_PING, 0, 0, 0, &reply) && reply.status == NX_STATUS_OK;
}

/* ---- small text helpers for the event and the staging directory ---- */

static usize length(const char *s) { usize n = 0; while (s[n]) n++; return n; }

/* The offset of `needle` in `hay[0..len)`, or -1. */
static long find(const volatile u8 *hay, u64 len, const char *needle) {
    usize n = length(needle);
    for (u64 i = 0; i + n <= len; i++) {
        usize j = 0;
        while (j < n && hay[i + j] == (u8)needle[j]) j++;
        if (j == n) return (long)i;
    }
    return -1;
}

/* Copies the JSON string after `"name":"` into out (no escapes); its length, or -1. */
static long string_field(const volatile u8 *json, u64 len, const char *name, char *out) {
    char pattern[32] = "\"";
    usize n = length(name);
    if (n > 24) return -1;
    memcpy(pattern + 1, name, n);
    memcpy(pattern + 1 + n, "\":\"", 4);
    long at = find(json, len, pattern);
    if (at < 0) return -1;
    u64 i = (u64)at + length(pattern);
    long k = 0;
    while (i < len && json[i] != '"' && json[i] != '\\' && k < MAX_NAME - 1) out[k++] = (char)json[i++];
    if (i >= len || json[i] != '"') return -1;
    out[k] = 0;
    return k;
}

static u64 number_at(const volatile u8 *text, u64 len, u64 i) {
    u64 v = 0;
    while (i < len && text[i] >= '0' && text[i] <= '9') v = v * 10 + (text[i++] - '0');
    return v;
}

#define FNV_START 0xcbf29ce484222325ull

/* FNV-1a 64 of `bytes`, continuing from `h` (FNV_START for a new hash). */
static u64 fnv1a(u64 h, const volatile u8 *bytes, u64 len) {
    for (u64 i = 0; i < len; i++) h = (h ^ bytes[i]) * 0x100000001b3ull;
    return h;
}

/* Appends to the result being written into a host buffer. */
static struct { volatile u8 *at; u64 len, capacity; } out;
static void emit(const char *s) { while (*s && out.len < out.capacity) out.at[out.len++] = (u8)*s++; }
static void emit_u(u64 v, unsigned base) {
    char digits[24];
    int n = 0;
    do { digits[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
    char text[24];
    int k = 0;
    while (n) text[k++] = digits[--n];
    text[k] = 0;
    emit(text);
}

/* ---- an invocation ---- */

/* Gets B/K whole: a Get, then Reads of its stream until a reply without MORE, each chunk
 * hashed in guest buffer 0 as it comes (unless !hash). Emits ,"get":{"status","bytes","fnv",
 * "chunks"} (the last reply's status, and its "error" meta if it failed); 0 if the host left
 * or opened a new epoch meanwhile. */
static int get_whole(const char *bucket, long bucket_len, const char *key, long key_len, int hash) {
    volatile u8 *buffer = region + buffer_at(0);
    memcpy((void *)buffer, bucket, (usize)bucket_len);
    memcpy((void *)(buffer + bucket_len), key, (usize)key_len);
    struct reply reply;
    if (!call(NX_OP_GET, (u16)bucket_len, (u16)key_len, 0, &reply)) return 0;
    u64 stream = reply.stream, bytes = 0, chunks = 1;
    u64 fnv = hash ? fnv1a(FNV_START, buffer + reply.meta_len, reply.body_len) : 0;
    bytes += reply.body_len;
    while (reply.status == NX_STATUS_OK && (reply.flags & NX_FLAG_MORE)) {
        if (!call(NX_OP_READ, 0, 0, stream, &reply)) return 0;
        if (hash) fnv = fnv1a(fnv, buffer + reply.meta_len, reply.body_len);
        bytes += reply.body_len;
        chunks++;
    }
    emit(",\"get\":{\"status\":"); emit_u(reply.status, 10);
    emit(",\"bytes\":"); emit_u(bytes, 10);
    if (hash) { emit(",\"fnv\":\""); emit_u(fnv, 16); emit("\""); }
    emit(",\"chunks\":"); emit_u(chunks, 10);
    if (reply.status != NX_STATUS_OK && reply.meta_len) {
        /* The error's meta, JSON: {"Code","Message","HTTPStatusCode"}. */
        emit(",\"error\":");
        for (u64 i = 0; i < reply.meta_len && out.len < out.capacity; i++) out.at[out.len++] = buffer[i];
    }
    emit("}");
    return 1;
}

/* Looks B/K up in the staging directory, whose entries read
 * {"bucket":B,"key":K,"offset":O,"size":S,...} (fields in that order): 1 with its offset and
 * size in the staging area if the host staged it, else 0. */
static int find_staged(const char *bucket, long bucket_len, const char *key, long key_len,
                       u64 *offset, u64 *size) {
    u64 directory_len = load64(NX_DIRECTORY_LEN);
    const volatile u8 *directory = region + geo.staging_offset;
    static char entry[2 * MAX_NAME + 48];
    usize n = 0;
    memcpy(entry + n, "{\"bucket\":\"", 11); n += 11;
    memcpy(entry + n, bucket, (usize)bucket_len); n += (usize)bucket_len;
    memcpy(entry + n, "\",\"key\":\"", 9); n += 9;
    memcpy(entry + n, key, (usize)key_len); n += (usize)key_len;
    memcpy(entry + n, "\",\"offset\":", 12);
    long at = directory_len && directory_len <= NX_STAGING_DIRECTORY_SIZE
        ? find(directory, directory_len, entry) : -1;
    if (at < 0) return 0;
    u64 i = (u64)at + length(entry);
    *offset = number_at(directory, directory_len, i);
    long size_at = find(directory + i, directory_len - i, ",\"size\":");
    *size = size_at < 0 ? 0 : number_at(directory, directory_len, i + (u64)size_at + 8);
    if (size_at < 0 || *offset < NX_STAGING_DIRECTORY_SIZE || *offset + *size > geo.staging_size)
        halt("a staged object outside the staging area");
    return 1;
}

static void serve_invocation(u64 epoch) {
    u64 slot = ring_slot(NX_RING_INVOCATIONS, invocations_head);
    u64 id = load64(slot + NX_INVOCATION_ID);
    u32 buffer = load32(slot + NX_INVOCATION_BUFFER);
    u64 len = load64(slot + NX_INVOCATION_LEN);
    store32(ring_base(NX_RING_INVOCATIONS) + NX_RING_CONSUMER, ++invocations_head);
    if (buffer < geo.guest_buffers || buffer >= geo.buffer_count || len > geo.buffer_size) {
        /* A restore onto a fresh region between the epoch check and here: not the host's
         * fault, and the main loop syncs to the new epoch next. */
        if (host_epoch() != epoch) return;
        halt("an invocation in a buffer that is not the host's");
    }
    const volatile u8 *event = region + buffer_at(buffer);
    static char bucket[MAX_NAME], key[MAX_NAME];
    long bucket_len = string_field(event, len, "bucket", bucket);
    long key_len = string_field(event, len, "key", key);
    long pings_at = find(event, len, "\"pings\":");
    u64 pings = pings_at < 0 ? 0 : number_at(event, len, (u64)pings_at + 8);
    int prefer_staged = find(event, len, "\"prefer_staged\":true") >= 0;
    int hash = find(event, len, "\"hash\":false") < 0;

    /* The reply goes into the event's buffer, once the event has been read. */
    out.at = region + buffer_at(buffer);
    out.len = 0;
    out.capacity = geo.buffer_size;
    emit("{\"epoch\":"); emit_u(epoch, 10);
    if (bucket_len > 0 && key_len > 0) {
        u64 offset = 0, size = 0;
        int staged = find_staged(bucket, bucket_len, key, key_len, &offset, &size);
        if (prefer_staged && staged) emit(",\"get\":null");
        else if (!get_whole(bucket, bucket_len, key, key_len, hash)) return;
        emit(",\"staged\":");
        if (!staged) {
            emit("null");
        } else {
            emit("{\"bytes\":"); emit_u(size, 10);
            if (hash) {
                emit(",\"fnv\":\"");
                emit_u(fnv1a(FNV_START, region + geo.staging_offset + offset, size), 16);
                emit("\"");
            }
            emit("}");
        }
    }
    u64 answered = 0;
    while (answered < pings && ping()) answered++;
    emit(",\"pings\":"); emit_u(answered, 10); emit("}");

    u64 result = ring_slot(NX_RING_RESULTS, results_tail);
    for (u64 i = 0; i < NX_DESC_SIZE; i += 8) store64(result + i, 0);
    store64(result + NX_RESULT_ID, id);
    store32(result + NX_RESULT_BUFFER, buffer);
    store32(result + NX_RESULT_STATUS, NX_RESULT_OK);
    store64(result + NX_RESULT_LEN, out.len);
    store32(ring_base(NX_RING_RESULTS) + NX_RING_PRODUCER, ++results_tail);
    say("invocation "); putu(id, 10); puts_(" answered\n");
}

void guest_main(void) {
    say("up\n");
    setup_naps();
    u64 bar = find_region(&region_size);
    if (!bar) halt("no ivshmem device (PCI 1af4:1110)");
    map_identity(bar, region_size);
    region = (volatile u8 *)(usize)bar;
    while (!read_header()) nap();
    say("region v"); putu(NX_VERSION, 10); puts_(" ok, "); putu(geo.guest_buffers, 10);
    puts_(" guest buffers\n");

    u64 synced = 0;
    for (;;) {
        u64 epoch = host_epoch();
        if (load32(NX_HOST_STATE) == NX_HOST_READY && epoch != synced) {
            /* A restore may have put this VM on a new region: take its geometry afresh. */
            if (!read_header()) continue;
            attach();
            if (!ping()) continue;
            store64(NX_EPOCH_ACK, epoch);
            synced = epoch;
            say("epoch "); putu(epoch, 10); puts_(" ping ok\n");
        }
        /* The epoch is read again after the index: a VM restored onto a fresh region under
         * this loop must not take the new region's index for a new invocation. */
        u32 produced = load32(ring_base(NX_RING_INVOCATIONS) + NX_RING_PRODUCER);
        if (produced != invocations_head && host_epoch() == synced) serve_invocation(synced);
        else nap();
    }
}
