/*
 * A stand-in liblustreapi for tests on machines without Lustre.
 *
 * Built by tests/lustre_standin/build.py into liblustreapi.so.1. It exports
 * the functions of hsm/lustre/prototypes.py (the HSM copytool API and the
 * few file calls the binding loads) with the prototypes of lustreapi.h:
 * build.py generates "llapi_prototypes.h" from that list and this file
 * includes it, so a definition whose signature drifts from the header's is
 * a compile error (and -Wmissing-prototypes makes an exported function the
 * header does not declare one too).
 *
 * Where the real library does an ioctl on a Lustre mount, this one sends a
 * request to the simulated MDT of the simfs tree (tests/lustre_standin/
 * mdt.py) over its Unix socket ROOT/.simfs/mdt.sock, found by walking up
 * from the path (or from ct->mnt). The framing is in protocol.py:
 *
 *   request: u32 magic, u16 op, u16 0, u32 len, payload
 *   answer:  i32 rc, u32 len, payload
 *
 * Payloads are the kernel's structs (hsm_user_request, hsm_copy,
 * hsm_progress, hsm_state_set, hsm_user_state, hsm_current_action, lu_fid).
 * A registered copytool's socket carries the KUC frames the kernel would
 * write to its pipe, so llapi_hsm_copytool_get_fd() is poll-able.
 *
 * Where it differs from the real library: a RESTORE's volatile file is
 * made by the MDT at COPY_START (the real begin makes it itself, then
 * COPY_START); opening by FID drops O_NOFOLLOW (simfs's .lustre/fid entries
 * are symlinks) and repairs a stale entry through fid2path; end sets no
 * times on the volatile file (simfs copies the original's at the swap);
 * no MDT socket above a path is -ENOTTY (-ENODEV for request, fid2path and
 * open_by_fid), an MDT that does not answer is -ENOTCONN, a connection
 * broken mid-call -EIO.
 *
 * Written from the behaviour described in lustre-release
 * (lustre/utils/liblustreapi_hsm.c, liblustreapi_kernelconn.c,
 * lustre/llite/dir.c); no code is copied.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/types.h>

/* ---------------------------------------------------------------------
 * Structures, laid out as lustre_user.h / lustre_kernelcomm.h do (LP64).
 */
struct lu_fid {
	__u64 f_seq;
	__u32 f_oid;
	__u32 f_ver;
} __attribute__((packed));

struct hsm_extent {
	__u64 offset;
	__u64 length;
} __attribute__((packed));

struct hsm_action_item {
	__u32 hai_len;
	__u32 hai_action;
	struct lu_fid hai_fid;
	struct lu_fid hai_dfid;
	struct hsm_extent hai_extent;
	__u64 hai_cookie;
	__u64 hai_gid;
	char hai_data[0];
} __attribute__((packed));

struct hsm_action_list {
	__u32 hal_version;
	__u32 hal_count;
	__u64 hal_compound_id;
	__u64 hal_flags;
	__u32 hal_archive_id;
	__u32 padding1;
	char hal_fsname[0];
} __attribute__((packed));

struct hsm_user_state {
	__u32 hus_states;
	__u32 hus_archive_id;
	__u32 hus_in_progress_state;
	__u32 hus_in_progress_action;
	struct hsm_extent hus_in_progress_location;
	char hus_extended_info[];
};

struct hsm_current_action {
	__u32 hca_state;
	__u32 hca_action;
	struct hsm_extent hca_location;
};

struct hsm_request {
	__u32 hr_action;
	__u32 hr_archive_id;
	__u64 hr_flags;
	__u32 hr_itemcount;
	__u32 hr_data_len;
};

struct hsm_user_item {
	struct lu_fid hui_fid;
	struct hsm_extent hui_extent;
} __attribute__((packed));

struct hsm_user_request {
	struct hsm_request hur_request;
	struct hsm_user_item hur_user_item[0];
} __attribute__((packed));

struct hsm_progress {
	struct lu_fid hp_fid;
	__u64 hp_cookie;
	struct hsm_extent hp_extent;
	__u16 hp_flags;
	__u16 hp_errval;
	__u32 padding;
};

struct hsm_copy {
	__u64 hc_data_version;
	__u16 hc_flags;
	__u16 hc_errval;
	__u32 padding;
	struct hsm_action_item hc_hai;
};

struct hsm_state_set {
	__u32 hss_valid;
	__u32 hss_archive_id;
	__u64 hss_setmask;
	__u64 hss_clearmask;
};

/* LL_IOC_HSM_IMPORT's argument (lustre_user.h) */
struct hsm_user_import {
	__u64 hui_size;
	__u64 hui_atime;
	__u64 hui_mtime;
	__u32 hui_atime_ns;
	__u32 hui_mtime_ns;
	__u32 hui_uid;
	__u32 hui_gid;
	__u32 hui_mode;
	__u32 hui_archive_id;
};

struct kuc_hdr {
	__u16 kuc_magic;
	__u8 kuc_transport;
	__u8 kuc_flags;
	__u16 kuc_msgtype;
	__u16 kuc_msglen;
} __attribute__((aligned(sizeof(__u64))));

struct lustre_kernelcomm {
	__u32 lk_wfd;
	__u32 lk_rfd;
	__u32 lk_uid;
	__u32 lk_group;
	__u32 lk_data_count;
	__u32 lk_flags;
	__u32 lk_data[];
} __attribute__((packed));

#define SUN_PATH_MAX sizeof(((struct sockaddr_un *)0)->sun_path)

/* The copytool handle: the fields of the real one, at the real offsets
 * (callers such as coordinatool fake them), then the stand-in's own. */
struct hsm_copytool_private {
	int magic;
	char *mnt;
	struct kuc_hdr *kuch;
	int mnt_fd;
	int open_by_fid_fd;
	struct lustre_kernelcomm *kuc;
	/* stand-in only */
	__u64 ct_id;
	char sock[SUN_PATH_MAX];
};

struct hsm_copyaction_private {
	__u32 magic;
	__s32 source_fd;
	__s32 data_fd;
	const struct hsm_copytool_private *ct_priv;
	struct hsm_copy copy;
	struct stat stat;
	/* stand-in only: the MDT this action talks to */
	char sock[SUN_PATH_MAX];
};

#include "llapi_prototypes.h"

_Static_assert(sizeof(struct lu_fid) == 16, "lu_fid");
_Static_assert(sizeof(struct hsm_extent) == 16, "hsm_extent");
_Static_assert(sizeof(struct hsm_action_item) == 72, "hsm_action_item");
_Static_assert(offsetof(struct hsm_action_item, hai_fid) == 8, "hai_fid");
_Static_assert(offsetof(struct hsm_action_item, hai_dfid) == 24, "hai_dfid");
_Static_assert(offsetof(struct hsm_action_item, hai_extent) == 40, "hai_extent");
_Static_assert(offsetof(struct hsm_action_item, hai_cookie) == 56, "hai_cookie");
_Static_assert(offsetof(struct hsm_action_item, hai_gid) == 64, "hai_gid");
_Static_assert(sizeof(struct hsm_action_list) == 32, "hsm_action_list");
_Static_assert(offsetof(struct hsm_action_list, hal_fsname) == 32, "hal_fsname");
_Static_assert(sizeof(struct hsm_user_state) == 32, "hsm_user_state");
_Static_assert(sizeof(struct hsm_current_action) == 24, "hsm_current_action");
_Static_assert(sizeof(struct hsm_request) == 24, "hsm_request");
_Static_assert(sizeof(struct hsm_user_item) == 32, "hsm_user_item");
_Static_assert(sizeof(struct hsm_user_request) == 24, "hsm_user_request");
_Static_assert(sizeof(struct hsm_progress) == 48, "hsm_progress");
_Static_assert(sizeof(struct hsm_copy) == 88, "hsm_copy");
_Static_assert(offsetof(struct hsm_copy, hc_hai) == 16, "hc_hai");
_Static_assert(sizeof(struct hsm_state_set) == 24, "hsm_state_set");
_Static_assert(sizeof(struct kuc_hdr) == 8, "kuc_hdr");
_Static_assert(offsetof(struct hsm_copytool_private, magic) == 0, "ct magic");
_Static_assert(offsetof(struct hsm_copytool_private, mnt) == 8, "ct mnt");
_Static_assert(offsetof(struct hsm_copytool_private, kuch) == 16, "ct kuch");
_Static_assert(offsetof(struct hsm_copytool_private, mnt_fd) == 24, "ct mnt_fd");
_Static_assert(offsetof(struct hsm_copytool_private, open_by_fid_fd) == 28, "ct open_by_fid_fd");
_Static_assert(offsetof(struct hsm_copytool_private, kuc) == 32, "ct kuc");

/* ---------------------------------------------------------------------
 * Constants.
 */
#define CT_PRIV_MAGIC		((int)0xC0BE2001)
#define CP_PRIV_MAGIC		0x19880429
#define HAL_MAXSIZE		(1 << 20)
#define KUC_MAGIC		0x191C
#define KUC_TRANSPORT_GENERIC	1
#define KUC_TRANSPORT_HSM	2
#define KUC_MSG_SHUTDOWN	1
#define HMT_ACTION_LIST		100
#define KUC_GRP_HSM		0x02
#define LK_FLG_STOP		0x0001
#define LK_FLG_DATANR		0x0002
#define LK_NOFD			(-1U)
#define HSMA_ARCHIVE		20
#define HSMA_RESTORE		21
#define HSMA_REMOVE		22
#define HSS_SETMASK		0x01
#define HSS_CLEARMASK		0x02
#define HSS_ARCHIVE_ID		0x04
#define MDS_MAXREQSIZE		(5 * 1024)
#define OPEN_BY_FID_PATH	".lustre/fid"
#define MDT_SOCKET		".simfs/mdt.sock"

/* protocol.py */
#define MDT_MAGIC		0x54444D53U
#define MDT_MAX_PAYLOAD		(16U << 20)
enum mdt_op {
	OP_REGISTER		= 1,
	OP_UNREGISTER		= 2,
	OP_REQUEST		= 3,
	OP_COPY_START		= 4,
	OP_PROGRESS		= 5,
	OP_COPY_END		= 6,
	OP_STATE_GET		= 7,
	OP_STATE_SET		= 8,
	OP_CURRENT_ACTION	= 9,
	OP_DATA_VERSION		= 10,
	OP_PATH2FID		= 11,
	OP_FID2PATH		= 12,
	OP_IMPORT		= 19,
};

struct mdt_request_hdr {
	__u32 magic;
	__u16 op;
	__u16 reserved;
	__u32 len;
} __attribute__((packed));

struct mdt_answer_hdr {
	__s32 rc;
	__u32 len;
} __attribute__((packed));

/* ---------------------------------------------------------------------
 * Talking to the MDT.
 */
static int write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= n;
	}
	return 0;
}

static int read_full(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len > 0) {
		ssize_t n = read(fd, p, len);

		if (n == 0)
			return -EPIPE;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= n;
	}
	return 0;
}

/* The MDT socket of the tree holding @path (walking up), in @sock. The
 * root of the tree goes to @root when not NULL. -ENOTTY when there is
 * none: @path is not on a (stand-in) Lustre file system. */
static int mdt_socket_of(const char *path, char *sock, size_t socklen, char *root, size_t rootlen)
{
	char dir[PATH_MAX];
	struct stat st;

	if (path == NULL || *path == '\0')
		return -EINVAL;

	if (realpath(path, dir) == NULL) {
		/* not there (or a dangling link): start from its directory */
		char tmp[PATH_MAX];
		char *slash;

		if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
			return -ENAMETOOLONG;
		slash = strrchr(tmp, '/');
		if (slash == NULL)
			strcpy(tmp, ".");
		else if (slash == tmp)
			tmp[1] = '\0';
		else
			*slash = '\0';
		if (realpath(tmp, dir) == NULL)
			return -errno;
	}

	for (;;) {
		size_t n = strlen(dir);
		const char *sep = (n > 0 && dir[n - 1] == '/') ? "" : "/";

		if (snprintf(sock, socklen, "%s%s%s", dir, sep, MDT_SOCKET) < (int)socklen &&
		    stat(sock, &st) == 0 && S_ISSOCK(st.st_mode)) {
			if (root != NULL && snprintf(root, rootlen, "%s", dir) >= (int)rootlen)
				return -ENAMETOOLONG;
			return 0;
		}
		if (strcmp(dir, "/") == 0)
			return -ENOTTY;
		char *slash = strrchr(dir, '/');

		if (slash == dir)
			dir[1] = '\0';
		else
			*slash = '\0';
	}
}

static int mdt_connect(const char *sock)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(sock) >= sizeof(sun.sun_path))
		return -ENAMETOOLONG;
	strcpy(sun.sun_path, sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		/* the MDT is not there: as a client whose import is down */
		close(fd);
		return -ENOTCONN;
	}
	return fd;
}

static int mdt_send(int fd, enum mdt_op op, const void *a, size_t alen, const void *b, size_t blen)
{
	struct mdt_request_hdr hdr = {
		.magic = MDT_MAGIC,
		.op = op,
		.len = (__u32)(alen + blen),
	};
	int rc;

	rc = write_full(fd, &hdr, sizeof(hdr));
	if (rc == 0 && alen > 0)
		rc = write_full(fd, a, alen);
	if (rc == 0 && blen > 0)
		rc = write_full(fd, b, blen);
	return rc;
}

/* The answer's rc (0, >= 0 or -errno); its payload in @ans (at most
 * @anscap bytes, the length in *@anslen). Transport failures are -EIO. */
static int mdt_answer(int fd, void *ans, size_t anscap, size_t *anslen)
{
	struct mdt_answer_hdr hdr;
	int rc;

	rc = read_full(fd, &hdr, sizeof(hdr));
	if (rc < 0)
		return -EIO;
	if (hdr.len > anscap || hdr.len > MDT_MAX_PAYLOAD)
		return -EPROTO;
	if (hdr.len > 0 && read_full(fd, ans, hdr.len) < 0)
		return -EIO;
	if (anslen != NULL)
		*anslen = hdr.len;
	return hdr.rc;
}

/* One request, one answer, on a fresh connection. */
static int mdt_call(const char *sock, enum mdt_op op, const void *a, size_t alen,
		    const void *b, size_t blen, void *ans, size_t anscap, size_t *anslen)
{
	int fd = mdt_connect(sock);
	int rc;

	if (fd < 0)
		return fd;
	rc = mdt_send(fd, op, a, alen, b, blen);
	if (rc < 0)
		rc = -EIO;
	else
		rc = mdt_answer(fd, ans, anscap, anslen);
	close(fd);
	return rc;
}

/* An absolute path to send, NUL included in its length. */
static int abs_path(const char *path, char *out, size_t outlen, size_t *len)
{
	if (path == NULL || *path == '\0')
		return -EINVAL;
	if (realpath(path, out) == NULL)
		return -errno;
	*len = strlen(out) + 1;
	(void)outlen;
	return 0;
}

/* A call about the file at @path: the MDT found from it, @head then the
 * absolute path as payload. */
static int path_call(const char *path, enum mdt_op op, const void *head, size_t headlen,
		     void *ans, size_t anscap, size_t *anslen)
{
	char sock[SUN_PATH_MAX];
	char abs[PATH_MAX];
	size_t len = 0;
	int rc;

	rc = abs_path(path, abs, sizeof(abs), &len);
	if (rc < 0)
		return rc;
	rc = mdt_socket_of(abs, sock, sizeof(sock), NULL, 0);
	if (rc < 0)
		return rc;
	return mdt_call(sock, op, head, headlen, abs, len, ans, anscap, anslen);
}

static void fid_name(const struct lu_fid *fid, char *buf, size_t len)
{
	snprintf(buf, len, "%#llx:0x%x:0x%x", (unsigned long long)fid->f_seq,
		 (unsigned int)fid->f_oid, (unsigned int)fid->f_ver);
}

/* Open by FID in @dirfd (a tree's .lustre/fid). simfs keeps symlinks there,
 * so O_NOFOLLOW (which Lustre's copytool calls pass) is dropped. A stale
 * link (the file was renamed) is repaired by the MDT's fid2path, then the
 * open is tried again. */
static int open_by_fid_in(int dirfd, const char *sock, const struct lu_fid *fid, int flags)
{
	char name[64];
	int fd;

	fid_name(fid, name, sizeof(name));
	flags &= ~O_NOFOLLOW;
	fd = openat(dirfd, name, flags);
	if (fd < 0 && errno == ENOENT && sock != NULL) {
		char rel[PATH_MAX];
		__s32 linkno = 0;

		if (mdt_call(sock, OP_FID2PATH, fid, sizeof(*fid), &linkno, sizeof(linkno),
			     rel, sizeof(rel), NULL) == 0)
			fd = openat(dirfd, name, flags);
		else
			errno = ENOENT;
	}
	return fd < 0 ? -errno : fd;
}

/* ---------------------------------------------------------------------
 * Copytool registration and action lists.
 */
int llapi_hsm_copytool_register(struct hsm_copytool_private **priv, const char *mnt,
				int archive_count, int *archives, int rfd_flags)
{
	struct hsm_copytool_private *ct;
	size_t payload_len;
	__u32 *payload = NULL;
	__u64 ct_id = 0;
	size_t anslen = 0;
	int fd = -1;
	int rc;
	int i;

	if (priv == NULL || mnt == NULL)
		return -EINVAL;
	if (archive_count > 0 && archives == NULL)
		return -EINVAL;
	if (archive_count < 0)
		archive_count = 0;
	for (i = 0; i < archive_count; i++) {
		if (archives[i] == 0) {	/* 0 in the list: every archive */
			archive_count = 0;
			break;
		}
	}

	ct = calloc(1, sizeof(*ct));
	if (ct == NULL)
		return -ENOMEM;
	ct->magic = CT_PRIV_MAGIC;
	ct->mnt_fd = -1;
	ct->open_by_fid_fd = -1;

	ct->mnt = strdup(mnt);
	ct->kuch = calloc(1, HAL_MAXSIZE + sizeof(struct kuc_hdr));
	ct->kuc = calloc(1, sizeof(*ct->kuc) + archive_count * sizeof(__u32));
	if (ct->mnt == NULL || ct->kuch == NULL || ct->kuc == NULL) {
		rc = -ENOMEM;
		goto out_err;
	}
	ct->kuc->lk_rfd = LK_NOFD;
	ct->kuc->lk_wfd = LK_NOFD;

	ct->mnt_fd = open(ct->mnt, O_RDONLY | O_CLOEXEC);
	if (ct->mnt_fd < 0) {
		rc = -errno;
		goto out_err;
	}
	ct->open_by_fid_fd = openat(ct->mnt_fd, OPEN_BY_FID_PATH, O_RDONLY | O_CLOEXEC);
	if (ct->open_by_fid_fd < 0) {
		rc = -errno;
		goto out_err;
	}
	rc = mdt_socket_of(ct->mnt, ct->sock, sizeof(ct->sock), NULL, 0);
	if (rc < 0)
		goto out_err;

	ct->kuc->lk_group = KUC_GRP_HSM;
	ct->kuc->lk_uid = getpid();
	ct->kuc->lk_flags = LK_FLG_DATANR;
	ct->kuc->lk_data_count = archive_count;
	for (i = 0; i < archive_count; i++) {
		if (archives[i] < 0) {
			rc = -EINVAL;
			goto out_err;
		}
		ct->kuc->lk_data[i] = archives[i];
	}

	/* LL_IOC_HSM_CT_START: the connection becomes the copytool's pipe */
	payload_len = sizeof(__u32) * (1 + archive_count);
	payload = calloc(1, payload_len);
	if (payload == NULL) {
		rc = -ENOMEM;
		goto out_err;
	}
	payload[0] = archive_count;
	memcpy(payload + 1, ct->kuc->lk_data, archive_count * sizeof(__u32));

	fd = mdt_connect(ct->sock);
	if (fd < 0) {
		rc = fd;
		goto out_err;
	}
	rc = mdt_send(fd, OP_REGISTER, payload, payload_len, NULL, 0);
	if (rc < 0) {
		rc = -EIO;
		goto out_err;
	}
	rc = mdt_answer(fd, &ct_id, sizeof(ct_id), &anslen);
	if (rc < 0)
		goto out_err;
	if (anslen != sizeof(ct_id)) {
		rc = -EPROTO;
		goto out_err;
	}
	if (fcntl(fd, F_SETFL, rfd_flags) < 0) {
		rc = -errno;
		goto out_err;
	}
	ct->ct_id = ct_id;
	ct->kuc->lk_rfd = fd;
	free(payload);
	*priv = ct;
	return 0;

out_err:
	if (fd >= 0)
		close(fd);
	free(payload);
	if (ct->mnt_fd >= 0)
		close(ct->mnt_fd);
	if (ct->open_by_fid_fd >= 0)
		close(ct->open_by_fid_fd);
	free(ct->mnt);
	free(ct->kuch);
	free(ct->kuc);
	free(ct);
	return rc;
}

int llapi_hsm_copytool_unregister(struct hsm_copytool_private **priv)
{
	struct hsm_copytool_private *ct;
	__u64 ct_id;

	if (priv == NULL || *priv == NULL)
		return -EINVAL;
	ct = *priv;
	if (ct->magic != CT_PRIV_MAGIC)
		return -EINVAL;

	/* close the read side first, then tell the MDT to stop (LK_FLG_STOP) */
	if (ct->kuc->lk_rfd != LK_NOFD)
		close((int)ct->kuc->lk_rfd);
	ct->kuc->lk_rfd = LK_NOFD;
	ct_id = ct->ct_id;
	ct->kuc->lk_flags = LK_FLG_STOP;
	(void)mdt_call(ct->sock, OP_UNREGISTER, &ct_id, sizeof(ct_id), NULL, 0, NULL, 0, NULL);

	close(ct->open_by_fid_fd);
	close(ct->mnt_fd);
	free(ct->mnt);
	free(ct->kuch);
	free(ct->kuc);
	free(ct);
	*priv = NULL;
	return 0;
}

int llapi_hsm_copytool_get_fd(struct hsm_copytool_private *ct)
{
	if (ct == NULL || ct->magic != CT_PRIV_MAGIC)
		return -EINVAL;
	return (int)ct->kuc->lk_rfd;
}

/* libcfs_ukuc_msg_get's read: -EAGAIN only between messages, a message
 * begun is finished; EOF is -EPIPE. */
static int kuc_read(int fd, char *buf, size_t count)
{
	size_t total = 0;

	while (total < count) {
		ssize_t n = read(fd, buf + total, count - total);

		if (n > 0) {
			total += n;
		} else if (n == 0) {
			return -EPIPE;
		} else if (errno == EINTR) {
			continue;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			struct pollfd pfd = { .fd = fd, .events = POLLIN };

			if (total == 0)
				return -EAGAIN;
			if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
				return -errno;
		} else {
			return -errno;
		}
	}
	return 0;
}

static int kuc_msg_get(int fd, char *buf, int maxsize, int transport)
{
	struct kuc_hdr *kuch = (struct kuc_hdr *)buf;
	int rc;

	if (buf == NULL || maxsize < (int)sizeof(*kuch))
		return -EINVAL;
	memset(buf, 0, maxsize);
	for (;;) {
		rc = kuc_read(fd, buf, sizeof(*kuch));
		if (rc < 0)
			return rc;
		if (kuch->kuc_magic != KUC_MAGIC || kuch->kuc_msglen < sizeof(*kuch))
			return -EPROTO;
		if (kuch->kuc_msglen > maxsize)
			return -EMSGSIZE;
		rc = kuc_read(fd, buf + sizeof(*kuch), kuch->kuc_msglen - sizeof(*kuch));
		if (rc < 0)
			return rc;
		if (kuch->kuc_transport == transport || kuch->kuc_transport == KUC_TRANSPORT_GENERIC)
			return 0;
		/* other transports are dropped */
	}
}

int llapi_hsm_copytool_recv(struct hsm_copytool_private *ct, struct hsm_action_list **halh,
			    int *msgsize)
{
	struct kuc_hdr *kuch;
	struct hsm_action_list *hal;
	int rc;

	if (ct == NULL || ct->magic != CT_PRIV_MAGIC)
		return -EINVAL;
	if (halh == NULL || msgsize == NULL)
		return -EINVAL;
	kuch = ct->kuch;

repeat:
	rc = kuc_msg_get((int)ct->kuc->lk_rfd, (char *)kuch, HAL_MAXSIZE + sizeof(*kuch),
			 KUC_TRANSPORT_HSM);
	if (rc < 0)
		goto out_err;

	if (kuch->kuc_transport == KUC_TRANSPORT_GENERIC && kuch->kuc_msgtype == KUC_MSG_SHUTDOWN) {
		rc = -ESHUTDOWN;
		goto out_err;
	}
	if (kuch->kuc_transport != KUC_TRANSPORT_HSM || kuch->kuc_msgtype != HMT_ACTION_LIST) {
		rc = -EPROTO;
		goto out_err;
	}
	if (kuch->kuc_msglen < sizeof(*kuch) + sizeof(*hal)) {
		rc = -EPROTO;
		goto out_err;
	}
	hal = (struct hsm_action_list *)(kuch + 1);

	/* not an archive this copytool serves: skipped (hal_version is not checked) */
	if (ct->kuc->lk_data_count != 0) {
		__u32 i;

		for (i = 0; i < ct->kuc->lk_data_count; i++)
			if (hal->hal_archive_id == ct->kuc->lk_data[i])
				break;
		if (i >= ct->kuc->lk_data_count)
			goto repeat;
	}

	*halh = hal;
	*msgsize = kuch->kuc_msglen - sizeof(*kuch);
	return 0;

out_err:
	*halh = NULL;
	*msgsize = 0;
	return rc;
}

/* ---------------------------------------------------------------------
 * Copy actions.
 */

/* LL_IOC_HSM_COPY_START: the MDT fills hc_data_version (ARCHIVE) or creates
 * the volatile file and gives its FID (RESTORE; its path comes after the
 * struct). */
static int copy_start(struct hsm_copyaction_private *hcp, char *volatile_path, size_t len)
{
	char ans[sizeof(struct hsm_copy) + PATH_MAX + 1];
	size_t anslen = 0;
	int rc;

	rc = mdt_call(hcp->sock, OP_COPY_START, &hcp->copy, sizeof(hcp->copy), NULL, 0,
		      ans, sizeof(ans) - 1, &anslen);
	if (rc < 0)
		return rc;
	if (anslen < sizeof(hcp->copy))
		return -EPROTO;
	memcpy(&hcp->copy, ans, sizeof(hcp->copy));
	ans[anslen] = '\0';
	if (volatile_path != NULL) {
		if (anslen <= sizeof(hcp->copy))
			return -EPROTO;
		if (snprintf(volatile_path, len, "%s", ans + sizeof(hcp->copy)) >= (int)len)
			return -ENAMETOOLONG;
	}
	return 0;
}

int llapi_hsm_action_begin(struct hsm_copyaction_private **phcp,
			   const struct hsm_copytool_private *ct,
			   const struct hsm_action_item *hai,
			   int restore_mdt_index, int restore_open_flags, bool is_error)
{
	struct hsm_copyaction_private *hcp;
	int rc;

	if (phcp == NULL || hai == NULL)
		return -EINVAL;
	/* the volatile file of a RESTORE is made on MDT restore_mdt_index
	 * (-1: the parent's); the stand-in has one MDT: another index is a
	 * device that does not exist */
	if (!is_error && hai->hai_action == HSMA_RESTORE && restore_mdt_index != -1 && restore_mdt_index != 0)
		return -ENODEV;
	hcp = calloc(1, sizeof(*hcp));
	if (hcp == NULL)
		return -ENOMEM;
	hcp->source_fd = -1;
	hcp->data_fd = -1;
	hcp->ct_priv = ct;
	memcpy(&hcp->copy.hc_hai, hai, sizeof(*hai));
	hcp->copy.hc_hai.hai_len = sizeof(*hai);

	if (is_error)
		goto ok_out;

	if (ct == NULL || ct->mnt == NULL) {
		rc = -EINVAL;
		goto err_out;
	}
	rc = mdt_socket_of(ct->mnt, hcp->sock, sizeof(hcp->sock), NULL, 0);
	if (rc < 0)
		goto err_out;

	if (hai->hai_action == HSMA_ARCHIVE) {
		rc = open_by_fid_in(ct->open_by_fid_fd, hcp->sock, &hai->hai_dfid,
				    O_RDONLY | O_NOATIME | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (rc < 0)
			goto err_out;
		hcp->source_fd = rc;
	} else if (hai->hai_action == HSMA_RESTORE) {
		char vpath[PATH_MAX];
		int flags = restore_open_flags;
		int fd;

		/* the file must be there; its owner becomes the volatile's */
		fd = open_by_fid_in(ct->open_by_fid_fd, hcp->sock, &hai->hai_dfid,
				    O_RDONLY | O_NOATIME | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0) {
			rc = fd;
			goto err_out;
		}
		rc = fstat(fd, &hcp->stat) < 0 ? -errno : 0;
		close(fd);
		if (rc < 0)
			goto err_out;

		rc = copy_start(hcp, vpath, sizeof(vpath));
		if (rc < 0)
			goto err_out;
		if ((flags & O_ACCMODE) == O_RDONLY)
			flags = O_RDWR | (flags & ~O_ACCMODE);
		flags &= ~(O_CREAT | O_EXCL | O_TRUNC);
		fd = open(vpath, flags | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0) {
			rc = -errno;
			goto err_out;
		}
		if (fchown(fd, hcp->stat.st_uid, hcp->stat.st_gid) < 0) {
			rc = -errno;
			close(fd);
			goto err_out;
		}
		hcp->data_fd = fd;
		goto ok_out;
	} else if (hai->hai_action == HSMA_REMOVE) {
		/* no COPY_START for a remove; a file already gone is fine */
		rc = open_by_fid_in(ct->open_by_fid_fd, hcp->sock, &hai->hai_fid,
				    O_RDONLY | O_NOATIME | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (rc >= 0)
			hcp->source_fd = rc;
		else if (rc != -ENOENT)
			goto err_out;
		goto ok_out;
	}

	rc = copy_start(hcp, NULL, 0);
	if (rc < 0)
		goto err_out;

ok_out:
	hcp->magic = CP_PRIV_MAGIC;
	*phcp = hcp;
	return 0;

err_out:
	if (hcp->source_fd >= 0)
		close(hcp->source_fd);
	if (hcp->data_fd >= 0)
		close(hcp->data_fd);
	free(hcp);
	return rc;
}

int llapi_hsm_action_end(struct hsm_copyaction_private **phcp, const struct hsm_extent *he,
			 int hp_flags, int errval)
{
	struct hsm_copyaction_private *hcp;
	struct hsm_action_item *hai;
	int rc;

	if (phcp == NULL || *phcp == NULL || he == NULL)
		return -EINVAL;
	hcp = *phcp;
	if (hcp->magic != CP_PRIV_MAGIC)
		return -EINVAL;
	hai = &hcp->copy.hc_hai;

	if (hai->hai_action == HSMA_RESTORE && errval == 0 && hcp->data_fd >= 0) {
		if (fsync(hcp->data_fd) < 0)
			errval = -errno;
	}

	/* two FIDs for a copy: the data FID is the one the end is about */
	if (hai->hai_action == HSMA_ARCHIVE || hai->hai_action == HSMA_RESTORE)
		hai->hai_fid = hai->hai_dfid;
	hcp->copy.hc_flags = hp_flags;
	hcp->copy.hc_errval = (__u16)(errval < 0 ? -(unsigned int)errval : (unsigned int)errval);
	hcp->copy.hc_hai.hai_extent = *he;

	if (hcp->sock[0] == '\0') {
		/* begun with is_error: find the MDT now */
		if (hcp->ct_priv == NULL || hcp->ct_priv->mnt == NULL)
			rc = -EINVAL;
		else
			rc = mdt_socket_of(hcp->ct_priv->mnt, hcp->sock, sizeof(hcp->sock), NULL, 0);
		if (rc < 0)
			goto out;
	}
	rc = mdt_call(hcp->sock, OP_COPY_END, &hcp->copy, sizeof(hcp->copy), NULL, 0, NULL, 0, NULL);
out:
	/* only now are the files closed (the volatile one stays open until
	 * the MDT has swapped it in) */
	if (hcp->source_fd >= 0)
		close(hcp->source_fd);
	if (hcp->data_fd >= 0)
		close(hcp->data_fd);
	hcp->magic = 0;
	free(hcp);
	*phcp = NULL;
	return rc;
}

int llapi_hsm_action_progress(struct hsm_copyaction_private *hcp, const struct hsm_extent *he,
			      __u64 total, int hp_flags)
{
	struct hsm_progress hp;
	int rc;

	(void)total;	/* only logged by the real library */
	if (hcp == NULL || he == NULL)
		return -EINVAL;
	if (hcp->magic != CP_PRIV_MAGIC)
		return -EINVAL;
	if (hcp->sock[0] == '\0') {
		if (hcp->ct_priv == NULL || hcp->ct_priv->mnt == NULL)
			return -EINVAL;
		rc = mdt_socket_of(hcp->ct_priv->mnt, hcp->sock, sizeof(hcp->sock), NULL, 0);
		if (rc < 0)
			return rc;
	}
	memset(&hp, 0, sizeof(hp));
	hp.hp_cookie = hcp->copy.hc_hai.hai_cookie;
	hp.hp_flags = hp_flags;
	hp.hp_fid = hcp->copy.hc_hai.hai_dfid;	/* progress is on the data FID */
	hp.hp_extent = *he;
	return mdt_call(hcp->sock, OP_PROGRESS, &hp, sizeof(hp), NULL, 0, NULL, 0, NULL);
}

int llapi_hsm_action_get_dfid(const struct hsm_copyaction_private *hcp, struct lu_fid *fid)
{
	const struct hsm_action_item *hai = &hcp->copy.hc_hai;

	if (hcp->magic != CP_PRIV_MAGIC)
		return -EINVAL;
	if (hai->hai_action != HSMA_RESTORE && hai->hai_action != HSMA_ARCHIVE)
		return -EINVAL;
	*fid = hai->hai_dfid;
	return 0;
}

int llapi_hsm_action_get_fd(const struct hsm_copyaction_private *hcp)
{
	const struct hsm_action_item *hai = &hcp->copy.hc_hai;
	int fd;

	if (hcp->magic != CP_PRIV_MAGIC)
		return -EINVAL;
	if (hai->hai_action == HSMA_ARCHIVE)
		fd = dup(hcp->source_fd);
	else if (hai->hai_action == HSMA_RESTORE)
		fd = dup(hcp->data_fd);
	else
		return -EINVAL;
	return fd < 0 ? -errno : fd;
}

/* ---------------------------------------------------------------------
 * HSM state and requests.
 */
int llapi_hsm_state_get(const char *path, struct hsm_user_state *hus)
{
	size_t anslen = 0;
	int fd;
	int rc;

	if (path == NULL || hus == NULL)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	close(fd);
	rc = path_call(path, OP_STATE_GET, NULL, 0, hus, sizeof(*hus), &anslen);
	if (rc == 0 && anslen != sizeof(*hus))
		rc = -EPROTO;
	return rc;
}

int llapi_hsm_state_set(const char *path, __u64 setmask, __u64 clearmask, __u32 archive_id)
{
	struct hsm_state_set hss = {
		.hss_valid = HSS_SETMASK | HSS_CLEARMASK,
		.hss_setmask = setmask,
		.hss_clearmask = clearmask,
	};
	int fd;

	if (path == NULL)
		return -EINVAL;
	fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	close(fd);
	if (archive_id > 0) {	/* 0: no change */
		hss.hss_valid |= HSS_ARCHIVE_ID;
		hss.hss_archive_id = archive_id;
	}
	return path_call(path, OP_STATE_SET, &hss, sizeof(hss), NULL, 0, NULL);
}

int llapi_hsm_current_action(const char *path, struct hsm_current_action *hca)
{
	size_t anslen = 0;
	int fd;
	int rc;

	if (path == NULL || hca == NULL)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	close(fd);
	rc = path_call(path, OP_CURRENT_ACTION, NULL, 0, hca, sizeof(*hca), &anslen);
	if (rc == 0 && anslen != sizeof(*hca))
		rc = -EPROTO;
	return rc;
}

int llapi_hsm_request(const char *path, const struct hsm_user_request *request)
{
	char sock[SUN_PATH_MAX];
	__u64 total;
	int rc;

	if (request == NULL)
		return -EFAULT;
	rc = mdt_socket_of(path, sock, sizeof(sock), NULL, 0);
	if (rc < 0)
		return rc == -ENOTTY ? -ENODEV : rc;
	/* hur_len, and the client's limit (ll_dir_ioctl: MDS_MAXREQSIZE / 3) */
	total = sizeof(struct hsm_user_request) +
		(__u64)request->hur_request.hr_itemcount * sizeof(struct hsm_user_item) +
		request->hur_request.hr_data_len;
	if (total >= MDS_MAXREQSIZE / 3)
		return -E2BIG;
	return mdt_call(sock, OP_REQUEST, request, (size_t)total, NULL, 0, NULL, 0, NULL);
}

struct hsm_user_request *llapi_hsm_user_request_alloc(int itemcount, int data_len)
{
	if (itemcount < 0 || data_len < 0)
		return NULL;
	return calloc(1, sizeof(struct hsm_user_request) +
			 (size_t)itemcount * sizeof(struct hsm_user_item) + (size_t)data_len);
}

/* ---------------------------------------------------------------------
 * Files and FIDs.
 */
int llapi_get_data_version(int fd, __u64 *data_version, __u64 flags)
{
	char proc[64];
	char path[PATH_MAX];
	char sock[SUN_PATH_MAX];
	__u64 head = flags;
	size_t anslen = 0;
	ssize_t n;
	int rc;

	if (data_version == NULL)
		return -EINVAL;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = readlink(proc, path, sizeof(path) - 1);
	if (n < 0)
		return errno == ENOENT ? -EBADF : -errno;
	path[n] = '\0';
	if (path[0] != '/')
		return -ENOTTY;	/* a pipe, a socket... */
	rc = mdt_socket_of(path, sock, sizeof(sock), NULL, 0);
	if (rc < 0)
		return rc;
	rc = mdt_call(sock, OP_DATA_VERSION, &head, sizeof(head), path, strlen(path) + 1,
		      data_version, sizeof(*data_version), &anslen);
	if (rc == 0 && anslen != sizeof(*data_version))
		rc = -EPROTO;
	return rc;
}

int llapi_path2fid(const char *path, struct lu_fid *fid)
{
	size_t anslen = 0;
	int rc;

	if (path == NULL || fid == NULL)
		return -EINVAL;
	rc = path_call(path, OP_PATH2FID, NULL, 0, fid, sizeof(*fid), &anslen);
	if (rc == 0 && anslen != sizeof(*fid))
		rc = -EPROTO;
	return rc;
}

/* lhsmtool_posix --import: a new file at @dst, released, whose data is in
 * archive @archive, with @st's size, owner, mode and times. Like the real
 * library: the client creates the file (here with O_EXCL: the real open
 * with a released layout fails on a file that has one), then the MDT makes
 * it an imported, released file (LL_IOC_HSM_IMPORT); on any error the new
 * file is unlinked. The striping and pool are ignored, as a restore lays
 * the data out. */
int llapi_hsm_import(const char *dst, int archive, const struct stat *st,
		     unsigned long long stripe_size, int stripe_offset,
		     int stripe_count, int stripe_pattern, char *pool_name,
		     struct lu_fid *newfid)
{
	struct hsm_user_import hui;
	size_t anslen = 0;
	int fd;
	int rc;

	(void)stripe_size; (void)stripe_offset; (void)stripe_count;
	(void)stripe_pattern; (void)pool_name;
	if (dst == NULL || st == NULL || newfid == NULL || archive <= 0)
		return -EINVAL;
	fd = open(dst, O_CREAT | O_EXCL | O_WRONLY | O_NONBLOCK | O_CLOEXEC, st->st_mode & 07777);
	if (fd < 0)
		return -errno;
	close(fd);
	memset(&hui, 0, sizeof(hui));
	hui.hui_size = (__u64)st->st_size;
	hui.hui_atime = (__u64)st->st_atim.tv_sec;
	hui.hui_atime_ns = (__u32)st->st_atim.tv_nsec;
	hui.hui_mtime = (__u64)st->st_mtim.tv_sec;
	hui.hui_mtime_ns = (__u32)st->st_mtim.tv_nsec;
	hui.hui_uid = st->st_uid;
	hui.hui_gid = st->st_gid;
	hui.hui_mode = st->st_mode;
	hui.hui_archive_id = (__u32)archive;
	rc = path_call(dst, OP_IMPORT, &hui, sizeof(hui), newfid, sizeof(*newfid), &anslen);
	if (rc == 0 && anslen != sizeof(*newfid))
		rc = -EPROTO;
	if (rc < 0)
		unlink(dst);
	return rc;
}

/* LL_IOC_FID2MDTIDX: the stand-in has one MDT, index 0. The kernel
 * answers EBADF for a closed fd, and the ioctl's errno comes back negated. */
int llapi_get_mdt_index_by_fid(int fd, const struct lu_fid *fid, int *mdt_index)
{
	if (fid == NULL)
		return -EINVAL;
	if (fcntl(fd, F_GETFD) < 0)
		return -errno;
	if (mdt_index)
		*mdt_index = 0;
	return 0;
}

/* llapi_fid_parse: [0xSEQ:0xOID:0xVER], brackets optional, any base
 * strtoull takes; -ERANGE for a field too large. */
static int fid_parse(const char *s, struct lu_fid *fid)
{
	unsigned long long v[3];
	char *end;
	int rc = 0;
	int i;

	while (*s == ' ' || *s == '\t' || *s == '\n')
		s++;
	while (*s == '[')
		s++;
	for (i = 0; i < 3; i++) {
		errno = 0;
		v[i] = strtoull(s, &end, 0);
		if (end == s || (i < 2 && *end != ':'))
			return -EINVAL;
		if (errno == ERANGE || (i == 0 && v[i] == ULLONG_MAX) || (i > 0 && v[i] > UINT32_MAX))
			rc = -ERANGE;
		s = end + 1;
	}
	if (rc == 0) {
		fid->f_seq = v[0];
		fid->f_oid = (__u32)v[1];
		fid->f_ver = (__u32)v[2];
	}
	return rc;
}

int llapi_fid2path(const char *device, const char *fidstr, char *path, int pathlen,
		   long long *recno, int *linkno)
{
	char sock[SUN_PATH_MAX];
	char ans[PATH_MAX + 1];
	struct lu_fid fid;
	__s32 nlink = linkno != NULL ? *linkno : 0;
	size_t anslen = 0;
	int rc;

	(void)recno;
	if (device == NULL || *device == '\0' || fidstr == NULL || path == NULL)
		return -EINVAL;
	rc = fid_parse(fidstr, &fid);
	if (rc < 0)
		return rc;
	rc = mdt_socket_of(device, sock, sizeof(sock), NULL, 0);
	if (rc < 0)
		return -ENODEV;	/* not a mount point or path we know */
	rc = mdt_call(sock, OP_FID2PATH, &fid, sizeof(fid), &nlink, sizeof(nlink), ans,
		      sizeof(ans) - 1, &anslen);
	if (rc < 0)
		return rc;
	ans[anslen] = '\0';
	if (pathlen <= 0 || strlen(ans) + 1 > (size_t)pathlen)
		return -EOVERFLOW;
	memcpy(path, ans, strlen(ans) + 1);
	return 0;
}

int llapi_open_by_fid(const char *lustre_dir, const struct lu_fid *fid, int open_flags)
{
	char sock[SUN_PATH_MAX];
	char root[PATH_MAX];
	int dirfd;
	int rc;

	if (lustre_dir == NULL || fid == NULL)
		return -EINVAL;
	rc = mdt_socket_of(lustre_dir, sock, sizeof(sock), root, sizeof(root));
	if (rc < 0)
		return rc == -ENOTTY ? -ENODEV : rc;
	if (strlen(root) + 1 + strlen(OPEN_BY_FID_PATH) >= sizeof(root))
		return -ENAMETOOLONG;
	strcat(root, "/" OPEN_BY_FID_PATH);
	dirfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0)
		return -errno;
	rc = open_by_fid_in(dirfd, sock, fid, open_flags);
	close(dirfd);
	return rc;
}
