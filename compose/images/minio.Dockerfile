# A MinIO server image from a minio binary built on the host (`make tools`
# installs the pinned release). Like the official images, its entrypoint is
# minio, so it takes the same arguments: compose runs it with
# `server /data --console-address :9001`.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/bin
EXPOSE 9000 9001
ENTRYPOINT ["minio"]
CMD ["server", "/data"]
