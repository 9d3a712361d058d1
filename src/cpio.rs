//! cpio "newc" archives, the format of Linux initramfs images.
