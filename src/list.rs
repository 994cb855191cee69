//! The intrusive doubly linked list every part of the heap uses (segments by class, live and
//! cached segments, live and cached huge blocks).
//!
//! Owns the link discipline only: an element embeds one [`Links`] per list it can be on, and a
//! [`Field`] type names which one a [`List`] uses. Elements are raw pointers into memory the list
//! does not own, so pushing and removing are `unsafe`: the caller vouches that the element and its
//! neighbours are live.
//!
//! Invariants: an element is on at most one list per [`Field`]; off every list its links are null;
//! a [`CountedList`]'s `len` counts its elements.

use core::marker::PhantomData;
use core::ptr;

/// The links of one list, embedded in the element.
#[repr(C)]
pub struct Links<T> {
    prev: *mut T,
    next: *mut T,
}

impl<T> Links<T> {
    pub const NONE: Links<T> = Links {
        prev: ptr::null_mut(),
        next: ptr::null_mut(),
    };
}

/// Names the [`Links`] field of `T` that a list threads through.
pub trait Field<T> {
    /// The links of `item`.
    ///
    /// # Safety
    /// `item` must point to a live `T`.
    unsafe fn links(item: *mut T) -> *mut Links<T>;
}

/// A list of `T`s linked through the field `F` names: one word.
pub struct List<T, F: Field<T>> {
    head: *mut T,
    field: PhantomData<F>,
}

impl<T, F: Field<T>> List<T, F> {
    pub const fn new() -> Self {
        List {
            head: ptr::null_mut(),
            field: PhantomData,
        }
    }

    /// The first element (the one pushed last); null if the list is empty.
    #[inline(always)]
    pub fn head(&self) -> *mut T {
        self.head
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// The element after `item`; null at the end.
    ///
    /// # Safety
    /// `item` must be a live element of a list linked through `F`.
    #[inline(always)]
    pub unsafe fn next(item: *mut T) -> *mut T {
        // SAFETY: `item` is live (caller contract).
        unsafe { (*F::links(item)).next }
    }

    /// Puts `item` first.
    ///
    /// # Safety
    /// `item` must be live and on no list linked through `F`; the list's elements must be live.
    pub unsafe fn push_front(&mut self, item: *mut T) {
        // SAFETY: `item` and the current head are live (caller contract).
        unsafe {
            let links = F::links(item);
            (*links).prev = ptr::null_mut();
            (*links).next = self.head;
            if !self.head.is_null() {
                (*F::links(self.head)).prev = item;
            }
        }
        self.head = item;
    }

    /// Puts `item` right after `at`, an element of this list.
    ///
    /// # Safety
    /// `at` must be an element of this list; `item` must be live and on no list linked through
    /// `F`; the list's elements must be live.
    pub unsafe fn insert_after(&mut self, at: *mut T, item: *mut T) {
        // SAFETY: `at`, its successor and `item` are live (caller contract).
        unsafe {
            let at_links = F::links(at);
            let next = (*at_links).next;
            let links = F::links(item);
            (*links).prev = at;
            (*links).next = next;
            if !next.is_null() {
                (*F::links(next)).prev = item;
            }
            (*at_links).next = item;
        }
    }

    /// Takes `item` off the list.
    ///
    /// # Safety
    /// `item` must be an element of this list, and every element live.
    pub unsafe fn remove(&mut self, item: *mut T) {
        // SAFETY: `item` and its neighbours are live elements of this list (caller contract).
        unsafe {
            let links = F::links(item);
            let (prev, next) = ((*links).prev, (*links).next);
            if prev.is_null() {
                self.head = next;
            } else {
                (*F::links(prev)).next = next;
            }
            if !next.is_null() {
                (*F::links(next)).prev = prev;
            }
            *links = Links::NONE;
        }
    }

    /// Takes the first element off the list; null if it is empty.
    ///
    /// # Safety
    /// Every element must be live.
    pub unsafe fn pop_front(&mut self) -> *mut T {
        let item = self.head;
        if !item.is_null() {
            // SAFETY: the head is an element of this list (caller contract).
            unsafe { self.remove(item) };
        }
        item
    }

    /// The elements, front to back. The iterator holds no borrow of the list and reads an
    /// element's successor before yielding it, so the caller may remove (or move to another list)
    /// the element it was just given.
    ///
    /// # Safety
    /// Every element must be live, and stay live until the iterator has passed it.
    pub unsafe fn iter(&self) -> Iter<T, F> {
        Iter {
            next: self.head,
            field: PhantomData,
        }
    }
}

/// See [`List::iter`].
pub struct Iter<T, F: Field<T>> {
    next: *mut T,
    field: PhantomData<F>,
}

impl<T, F: Field<T>> Iterator for Iter<T, F> {
    type Item = *mut T;

    fn next(&mut self) -> Option<*mut T> {
        let item = self.next;
        if item.is_null() {
            return None;
        }
        // SAFETY: elements stay live until the iterator has passed them (`List::iter` contract).
        self.next = unsafe { List::<T, F>::next(item) };
        Some(item)
    }
}

impl<T, F: Field<T>> Default for List<T, F> {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`List`] that knows its length.
pub struct CountedList<T, F: Field<T>> {
    list: List<T, F>,
    len: usize,
}

impl<T, F: Field<T>> CountedList<T, F> {
    pub const fn new() -> Self {
        CountedList {
            list: List::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// See [`List::push_front`].
    ///
    /// # Safety
    /// As [`List::push_front`].
    pub unsafe fn push_front(&mut self, item: *mut T) {
        // SAFETY: forwarded caller contract.
        unsafe { self.list.push_front(item) };
        self.len += 1;
    }

    /// See [`List::remove`].
    ///
    /// # Safety
    /// As [`List::remove`].
    pub unsafe fn remove(&mut self, item: *mut T) {
        // SAFETY: forwarded caller contract.
        unsafe { self.list.remove(item) };
        self.len -= 1;
    }

    /// See [`List::pop_front`].
    ///
    /// # Safety
    /// As [`List::pop_front`].
    pub unsafe fn pop_front(&mut self) -> *mut T {
        let item = self.list.head();
        if !item.is_null() {
            // SAFETY: forwarded caller contract.
            unsafe { self.remove(item) };
        }
        item
    }

    /// See [`List::iter`].
    ///
    /// # Safety
    /// As [`List::iter`].
    pub unsafe fn iter(&self) -> Iter<T, F> {
        // SAFETY: forwarded caller contract.
        unsafe { self.list.iter() }
    }
}

impl<T, F: Field<T>> Default for CountedList<T, F> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Node {
        value: u32,
        links: Links<Node>,
    }

    struct ByLinks;

    impl Field<Node> for ByLinks {
        unsafe fn links(item: *mut Node) -> *mut Links<Node> {
            // SAFETY: `item` is live (caller contract).
            unsafe { &raw mut (*item).links }
        }
    }

    fn values(list: &List<Node, ByLinks>) -> Vec<u32> {
        // SAFETY: the test's nodes outlive the list.
        unsafe { list.iter().map(|n| (*n).value).collect() }
    }

    /// `count` nodes on no list, valued 0, 1, ...
    fn unlinked(count: u32) -> Vec<Node> {
        (0..count)
            .map(|value| Node {
                value,
                links: Links::NONE,
            })
            .collect()
    }

    /// The nodes' addresses, as the lists link them.
    fn addresses(nodes: &mut [Node]) -> Vec<*mut Node> {
        nodes.iter_mut().map(|n| n as *mut Node).collect()
    }

    #[test]
    fn push_remove_and_pop_keep_order_links_and_length() {
        let mut nodes = unlinked(4);
        let p = addresses(&mut nodes);
        let mut list = List::<Node, ByLinks>::new();
        // SAFETY: the nodes live in `nodes` for the whole test and join the list once each.
        unsafe {
            for &n in &p {
                list.push_front(n);
            }
            assert_eq!(values(&list), [3, 2, 1, 0]);
            list.remove(p[2]);
            assert_eq!(values(&list), [3, 1, 0]);
            assert!((*p[2]).links.next.is_null() && (*p[2]).links.prev.is_null());
            list.remove(p[3]);
            list.remove(p[0]);
            assert_eq!(values(&list), [1]);
            assert_eq!(list.pop_front(), p[1]);
            assert!(list.is_empty() && list.pop_front().is_null());
            for &n in &p {
                list.push_front(n);
            }
            // Removing the element just visited is allowed.
            for n in list.iter() {
                if (*n).value % 2 == 0 {
                    list.remove(n);
                }
            }
        }
        assert_eq!(values(&list), [3, 1]);
    }

    #[test]
    fn insert_after_links_both_neighbours() {
        let mut nodes = unlinked(4);
        let p = addresses(&mut nodes);
        let mut list = List::<Node, ByLinks>::new();
        // SAFETY: the nodes live in `nodes` for the whole test and join the list once each.
        unsafe {
            list.push_front(p[0]);
            list.insert_after(p[0], p[3]);
            list.insert_after(p[0], p[1]);
            list.insert_after(p[1], p[2]);
            assert_eq!(values(&list), [0, 1, 2, 3]);
            // The back links are right too: removing through them keeps the order.
            list.remove(p[2]);
            list.remove(p[3]);
            assert_eq!(values(&list), [0, 1]);
            list.remove(p[0]);
            assert_eq!(values(&list), [1]);
        }
    }

    #[test]
    fn a_counted_list_counts() {
        let mut nodes = unlinked(3);
        let p = addresses(&mut nodes);
        let mut list = CountedList::<Node, ByLinks>::new();
        // SAFETY: the nodes live in `nodes` for the whole test and join the list once each.
        unsafe {
            for &n in &p {
                list.push_front(n);
            }
            assert_eq!(list.len(), 3);
            list.remove(p[1]);
            assert_eq!(list.len(), 2);
            assert_eq!(list.pop_front(), p[2]);
            assert_eq!(list.len(), 1);
            assert_eq!(list.iter().collect::<Vec<_>>(), [p[0]]);
            assert_eq!(list.pop_front(), p[0]);
            assert_eq!(list.len(), 0);
            assert!(list.is_empty() && list.pop_front().is_null());
        }
    }
}
