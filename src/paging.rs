//! Paging for every list endpoint, the ADS's and the DMS's alike: `limit` (1 to
//! [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]) and the opaque `cursor` that a previous page
//! returned as `next_cursor`. Pure.

/// Items on a page when the caller does not say.
pub const DEFAULT_LIMIT: usize = 50;
/// Most items on one page.
pub const MAX_LIMIT: usize = 500;

/// A page request: at most `limit` items after `cursor` (from the previous page).
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub limit: usize,
    pub cursor: Option<String>,
}

/// A page of results and the cursor of the next one (`None`: this was the last).
#[derive(Debug)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// A `limit` outside 1 to [`MAX_LIMIT`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("limit must be 1 to {MAX_LIMIT}")]
pub struct BadLimit;

impl Page {
    /// The page a query's `limit` and `cursor` ask for (an empty cursor is the first page).
    pub fn new(limit: Option<usize>, cursor: Option<String>) -> Result<Page, BadLimit> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(BadLimit);
        }
        Ok(Page {
            limit,
            cursor: cursor.filter(|c| !c.is_empty()),
        })
    }
}

impl<T> Listed<T> {
    /// Cuts `rows` (fetched with one more than the page's limit) to a page; the next cursor is
    /// `cursor_of` the last item shown, when more rows were there.
    pub fn from_rows(mut rows: Vec<T>, page: &Page, cursor_of: impl Fn(&T) -> String) -> Self {
        let more = rows.len() > page.limit;
        rows.truncate(page.limit);
        let next = if more {
            rows.last().map(cursor_of)
        } else {
            None
        };
        Listed { items: rows, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors() {
        assert_eq!(Page::new(None, None).map(|p| p.limit), Ok(DEFAULT_LIMIT));
        assert_eq!(Page::new(Some(0), None).map(|p| p.limit), Err(BadLimit));
        assert_eq!(Page::new(Some(501), None).map(|p| p.limit), Err(BadLimit));
        assert_eq!(
            Page::new(Some(3), Some(String::new())).map(|p| p.cursor),
            Ok(None)
        );
        let page = Page::new(Some(2), None).unwrap_or_default();
        let l = Listed::from_rows(vec![1, 2, 3], &page, |n| n.to_string());
        assert_eq!((l.items, l.next.as_deref()), (vec![1, 2], Some("2")));
        let l = Listed::from_rows(vec![1, 2], &page, |n| n.to_string());
        assert_eq!((l.items, l.next), (vec![1, 2], None));
    }
}
