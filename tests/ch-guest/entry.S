/*
 * PVH entry of the test guest.
 *
 * A PVH loader (Cloud Hypervisor, QEMU) reads the "Xen" ELF note of type 18
 * (XEN_ELFNOTE_PHYS32_ENTRY) and jumps to the address it holds in 32-bit protected mode with
 * paging off. From there:
 *
 *   pvh_start (32-bit)   identity-map the first 1 GiB with 2 MiB pages (PML4[0] -> PDPT -> PD),
 *                        CR4.PAE, EFER.LME, CR0.PG: long mode; load a 64-bit GDT
 *   long_mode (64-bit)   data segments, stack, guest_main() (guest.c), which maps whatever else
 *                        it needs (the ivshmem BAR) into the same tables
 *
 * Interrupts stay off for the guest's whole life: it polls.
 */

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define PAGE_PRESENT_RW 0x3
#define PAGE_HUGE_PRESENT_RW 0x83
#define CR4_PAE 0x20
#define MSR_EFER 0xC0000080
#define EFER_LME 0x100
#define CR0_PG_PE 0x80000001

    .section .note.pvh, "a", @note
    .balign 4
    .long 4                         /* name size: "Xen\0" */
    .long 4                         /* descriptor size */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .long pvh_start
    .balign 4

    .section .text.entry, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    movl $boot_stack_top, %esp

    movl $boot_pdpt, %eax
    orl $PAGE_PRESENT_RW, %eax
    movl %eax, boot_pml4
    movl $boot_pd, %eax
    orl $PAGE_PRESENT_RW, %eax
    movl %eax, boot_pdpt
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $PAGE_HUGE_PRESENT_RW, %eax
    movl %eax, boot_pd(, %ecx, 8)
    movl $0, boot_pd + 4(, %ecx, 8)
    incl %ecx
    cmpl $512, %ecx
    jb 1b

    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $CR0_PG_PE, %eax
    movl %eax, %cr0

    lgdt gdt_pointer
    ljmp $0x08, $long_mode

    .code64
long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq $boot_stack_top, %rsp
    call guest_main
2:  cli
    hlt
    jmp 2b

    .section .rodata
    .balign 16
gdt:
    .quad 0                         /* null */
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
gdt_end:
gdt_pointer:
    .word gdt_end - gdt - 1
    .long gdt

    .section .bss
    .balign 4096
    .globl boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096
    .balign 16
boot_stack:
    .skip 65536
boot_stack_top:

    .section .note.GNU-stack, "", @progbits
